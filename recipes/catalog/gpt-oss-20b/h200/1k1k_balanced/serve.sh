#!/usr/bin/env bash
# trtkit recipe balanced: gpt-oss-20b on 8 x H200 SXM per instance, 1 replica(s), ISL 1024 / OSL 1024
# predicted per user 241.2 tokens/s (TPOT 4.15 ms), TTFT 55.6 ms, 3813 tokens/s/GPU at 128 requests per instance
set -euo pipefail
DEFAULT_MODEL_DIR=/models/gpt-oss-20b
MODEL_DIR="${MODEL_DIR:-$DEFAULT_MODEL_DIR}"
REPLICA="${REPLICA:-0}"  # 0..0: 1 instance(s) of 8 GPU(s) fit one 8-GPU node
PORT="${PORT:-8000}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$REPLICA" -ge 1 ]; then echo "REPLICA must be < 1" >&2; exit 1; fi
FIRST=$((REPLICA * 8))
export CUDA_VISIBLE_DEVICES="$(seq -s, "$FIRST" $((FIRST + 7)))"
exec trtllm-serve "$MODEL_DIR" --config "$HERE"/llm_options.yaml --host 0.0.0.0 --port "$((PORT + REPLICA))" --served_model_name openai/gpt-oss-20b
