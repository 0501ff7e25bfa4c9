#!/usr/bin/env bash
# trtkit recipe throughput: gpt-oss-120b on 1 x GB200 (NVL72) per instance, 72 replica(s), ISL 8192 / OSL 1024
# predicted per user 16.5 tokens/s (TPOT 60.43 ms), TTFT 109.9 ms, 8466 tokens/s/GPU at 512 requests per instance
set -euo pipefail
DEFAULT_MODEL_DIR=/models/gpt-oss-120b-nvfp4
MODEL_DIR="${MODEL_DIR:-$DEFAULT_MODEL_DIR}"
REPLICA="${REPLICA:-0}"  # 0..3: 4 instance(s) of 1 GPU(s) fit one 4-GPU node
PORT="${PORT:-8000}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$REPLICA" -ge 4 ]; then echo "REPLICA must be < 4" >&2; exit 1; fi
FIRST=$((REPLICA * 1))
export CUDA_VISIBLE_DEVICES="$(seq -s, "$FIRST" $((FIRST + 0)))"
exec trtllm-serve "$MODEL_DIR" --config "$HERE"/llm_options.yaml --host 0.0.0.0 --port "$((PORT + REPLICA))" --served_model_name openai/gpt-oss-120b
