#!/usr/bin/env bash
# trtkit recipe balanced: gpt-oss-20b on 8 x GB200 (NVL72) per instance, 9 replica(s), ISL 1024 / OSL 1024
# predicted per user 288.9 tokens/s (TPOT 3.46 ms), TTFT 15.3 ms, 18427 tokens/s/GPU at 512 requests per instance
set -euo pipefail
echo 'this instance spans 2 nodes (8 GPUs): launch it with slurm.sbatch or lws.yaml' >&2
exit 1
