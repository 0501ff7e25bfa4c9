#!/usr/bin/env bash
# trtkit recipe balanced: gpt-oss-20b on 8 x GB200 (NVL72) per instance, 9 replica(s), ISL 8192 / OSL 1024
# predicted per user 280.7 tokens/s (TPOT 3.56 ms), TTFT 94.7 ms, 4382 tokens/s/GPU at 128 requests per instance
set -euo pipefail
echo 'this instance spans 2 nodes (8 GPUs): launch it with slurm.sbatch or lws.yaml' >&2
exit 1
