"""GRPO on reasoning-gym's basic_arithmetic with LoRA, written against TRL's GRPOTrainer: only the
import line below says grpo (`from trl import ...` runs the same script on TRL).

    python examples/trl_style.py                              # SmolLM2-135M-Instruct from the hub
    python examples/trl_style.py --model path/to/model.gguf --max-steps 4

bench/trl_script.py runs this file through both trainers and prints their step times.
"""

import argparse
import re
import time

import reasoning_gym
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

from grpo import GRPOConfig, GRPOTrainer

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
parser.add_argument("--max-steps", type=int, default=50)
parser.add_argument("--output-dir", default="runs/trl-style")
args = parser.parse_args()

# Conversational prompts, with the reference answer as a column the rewards read.
problems = reasoning_gym.create_dataset("basic_arithmetic", seed=1, size=512, min_terms=2, max_terms=3,
                                        min_digits=1, max_digits=2)
dataset = Dataset.from_list([{"prompt": [{"role": "system", "content": "Answer with the number only."},
                                         {"role": "user", "content": p["question"]}],
                              "answer": p["answer"]} for p in problems])


def correct(prompts, completions, answer, **kwargs):
    """1 when the first number of the answer is the reference answer."""
    out = []
    for completion, ref in zip(completions, answer):
        found = re.search(r"-?\d+", completion[0]["content"])
        out.append(1.0 if found and found.group() == ref else 0.0)
    return out


def brief(completions, completion_ids, **kwargs):
    """Shorter answers score higher: 1 at one token, 0 at 32 or more."""
    return [max(0.0, 1.0 - (len(ids) - 1) / 31) for ids in completion_ids]


class StepTimer(TrainerCallback):
    """Prints each optimizer step's wall time and reward."""

    def on_step_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        print(f"step {state.global_step}: {time.perf_counter() - self.t0:.2f} s", flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            print(f"step {state.global_step}: reward {logs['reward']:.3f}", flush=True)


config = GRPOConfig(
    output_dir=args.output_dir,
    per_device_train_batch_size=8,
    gradient_accumulation_steps=4,        # a generation batch of 32 completions: 4 prompts x 8
    num_generations=8,
    max_completion_length=64,
    learning_rate=1e-5,
    beta=0.04,
    loss_type="grpo",
    reward_weights=[1.0, 0.2],
    max_steps=args.max_steps,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=not torch.cuda.is_available(),
    bf16=torch.cuda.is_available(),       # bf16 autocast on a GPU; fp32 on a CPU
)
trainer = GRPOTrainer(
    model=args.model,
    reward_funcs=[correct, brief],
    args=config,
    train_dataset=dataset,
    peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    callbacks=[StepTimer()],
)
trainer.train()
trainer.save_model()
