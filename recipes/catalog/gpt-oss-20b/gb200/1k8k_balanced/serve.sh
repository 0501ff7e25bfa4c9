#!/usr/bin/env bash
# trtkit recipe balanced: gpt-oss-20b on 8 x GB200 (NVL72) per instance, 9 replica(s), ISL 1024 / OSL 8192
# predicted per user 245.7 tokens/s (TPOT 4.07 ms), TTFT 16.7 ms, 23578 tokens/s/GPU at 768 requests per instance
set -euo pipefail
echo 'this instance spans 2 nodes (8 GPUs): launch it with slurm.sbatch or lws.yaml' >&2
exit 1
