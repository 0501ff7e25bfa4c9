#!/usr/bin/env bash
# trtkit recipe balanced: gpt-oss-120b on 8 x GB200 (NVL72) per instance, 9 replica(s), ISL 1024 / OSL 8192
# predicted per user 83.5 tokens/s (TPOT 11.98 ms), TTFT 33.2 ms, 16028 tokens/s/GPU at 1536 requests per instance
set -euo pipefail
echo 'this instance spans 2 nodes (8 GPUs): launch it with slurm.sbatch or lws.yaml' >&2
exit 1
