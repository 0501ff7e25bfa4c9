#!/usr/bin/env bash
# trtkit recipe latency: gpt-oss-20b on 8 x GB200 (NVL72) per instance, 9 replica(s), ISL 1024 / OSL 1024
# predicted per user 799.9 tokens/s (TPOT 1.25 ms), TTFT 8.8 ms, 99 tokens/s/GPU at 1 requests per instance
set -euo pipefail
echo 'this instance spans 2 nodes (8 GPUs): launch it with slurm.sbatch or lws.yaml' >&2
exit 1
