#!/usr/bin/env bash
# trtkit recipe throughput: gpt-oss-120b on 2 x H100 SXM per instance, 4 replica(s), ISL 8192 / OSL 1024
# predicted per user 7.6 tokens/s (TPOT 131.59 ms), TTFT 591.8 ms, 1454 tokens/s/GPU at 384 requests per instance
set -euo pipefail
DEFAULT_MODEL_DIR=/models/gpt-oss-120b
MODEL_DIR="${MODEL_DIR:-$DEFAULT_MODEL_DIR}"
REPLICA="${REPLICA:-0}"  # 0..3: 4 instance(s) of 2 GPU(s) fit one 8-GPU node
PORT="${PORT:-8000}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$REPLICA" -ge 4 ]; then echo "REPLICA must be < 4" >&2; exit 1; fi
FIRST=$((REPLICA * 2))
export CUDA_VISIBLE_DEVICES="$(seq -s, "$FIRST" $((FIRST + 1)))"
exec trtllm-serve "$MODEL_DIR" --config "$HERE"/llm_options.yaml --host 0.0.0.0 --port "$((PORT + REPLICA))" --served_model_name openai/gpt-oss-120b
