#!/usr/bin/env bash
# trtkit recipe balanced: gpt-oss-120b on 8 x GB200 (NVL72) per instance, 9 replica(s), ISL 8192 / OSL 1024
# predicted per user 78.5 tokens/s (TPOT 12.74 ms), TTFT 148.6 ms, 3729 tokens/s/GPU at 384 requests per instance
set -euo pipefail
echo 'this instance spans 2 nodes (8 GPUs): launch it with slurm.sbatch or lws.yaml' >&2
exit 1
