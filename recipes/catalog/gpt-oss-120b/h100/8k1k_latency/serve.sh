#!/usr/bin/env bash
# trtkit recipe latency: gpt-oss-120b on 8 x H100 SXM per instance, 1 replica(s), ISL 8192 / OSL 1024
# predicted per user 488.3 tokens/s (TPOT 2.05 ms), TTFT 200.9 ms, 56 tokens/s/GPU at 1 requests per instance
set -euo pipefail
DEFAULT_MODEL_DIR=/models/gpt-oss-120b
MODEL_DIR="${MODEL_DIR:-$DEFAULT_MODEL_DIR}"
REPLICA="${REPLICA:-0}"  # 0..0: 1 instance(s) of 8 GPU(s) fit one 8-GPU node
PORT="${PORT:-8000}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$REPLICA" -ge 1 ]; then echo "REPLICA must be < 1" >&2; exit 1; fi
FIRST=$((REPLICA * 8))
export CUDA_VISIBLE_DEVICES="$(seq -s, "$FIRST" $((FIRST + 7)))"
exec trtllm-serve "$MODEL_DIR" --config "$HERE"/llm_options.yaml --host 0.0.0.0 --port "$((PORT + REPLICA))" --served_model_name openai/gpt-oss-120b
