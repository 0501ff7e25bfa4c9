#!/usr/bin/env bash
# trtkit recipe balanced: gpt-oss-120b on 1 x H200 SXM per instance, 8 replica(s), ISL 8192 / OSL 1024
# predicted per user 329.0 tokens/s (TPOT 3.04 ms), TTFT 355.5 ms, 296 tokens/s/GPU at 1 requests per instance
set -euo pipefail
DEFAULT_MODEL_DIR=/models/gpt-oss-120b
MODEL_DIR="${MODEL_DIR:-$DEFAULT_MODEL_DIR}"
REPLICA="${REPLICA:-0}"  # 0..7: 8 instance(s) of 1 GPU(s) fit one 8-GPU node
PORT="${PORT:-8000}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$REPLICA" -ge 8 ]; then echo "REPLICA must be < 8" >&2; exit 1; fi
FIRST=$((REPLICA * 1))
export CUDA_VISIBLE_DEVICES="$(seq -s, "$FIRST" $((FIRST + 0)))"
exec trtllm-serve "$MODEL_DIR" --config "$HERE"/llm_options.yaml --host 0.0.0.0 --port "$((PORT + REPLICA))" --served_model_name openai/gpt-oss-120b
