#!/usr/bin/env bash
# trtkit recipe latency: gpt-oss-120b on 8 x GB200 (NVL72) per instance, 9 replica(s), ISL 1024 / OSL 8192
# predicted per user 532.0 tokens/s (TPOT 1.88 ms), TTFT 15.9 ms, 133 tokens/s/GPU at 2 requests per instance
set -euo pipefail
echo 'this instance spans 2 nodes (8 GPUs): launch it with slurm.sbatch or lws.yaml' >&2
exit 1
