#!/usr/bin/env bash
# trtkit recipe latency: gpt-oss-20b on 8 x GB200 (NVL72) per instance, 9 replica(s), ISL 1024 / OSL 8192
# predicted per user 773.1 tokens/s (TPOT 1.29 ms), TTFT 9.0 ms, 193 tokens/s/GPU at 2 requests per instance
set -euo pipefail
echo 'this instance spans 2 nodes (8 GPUs): launch it with slurm.sbatch or lws.yaml' >&2
exit 1
