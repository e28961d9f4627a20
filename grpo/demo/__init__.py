"""The built-in demo model: a tiny Llama-architecture causal LM with a character-level
`PreTrainedTokenizerFast`, warm-started by a short supervised stage on the arithmetic task.

The supervised data come from a *sloppy teacher*: on problems whose units digits carry
(e.g. 27+15), it forgets the carry `forget_carry` of the time (writing 32 instead of 42).
The warm-started model therefore imitates a habit that is right on carry-free problems and
usually wrong on the others, while still sampling the right answer some of the time. That is
the situation GRPO is for: the exact-match verifier rewards the right answers the model already
samples, and the held-out accuracy climbs far above what the imitation learned.

Everything is a standard Hugging Face artifact: the folder written here loads with
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`. The warm-started
model is cached (keyed by the recipe below) so later runs skip the supervised stage.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from ..files import atomic_folder, cache_root
from ..config import CALCULATOR_DEMO_ENVS as CALCULATOR_ENVS       # the environments of CALCULATOR_RECIPE
from ..data.tasks import get_task
from . import sft

CHARS = "0123456789+-*= "
EOS = "<eos>"
UNK = "<unk>"

# Changing anything here changes the cache key, so a stale cached model is never reused.
RECIPE = dict(
    version=1,
    task="arithmetic",
    hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
    sft_steps=900, sft_batch_size=64, sft_lr=1e-3, forget_carry=0.6, seed=0,
)


# The calculator demo (--env calculator, docs/environments.md): two-digit products, which the
# model cannot work out; its teacher calls the calculator `p_call` of the time (the expression as
# its turn, the result read back) and otherwise guesses (the last two digits at random).
CALCULATOR_RECIPE = dict(
    version=1,
    task="multiplication", kind="calculator",
    hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
    sft_steps=600, sft_batch_size=64, sft_lr=1e-3, p_call=0.3, seed=0,
)


DEMO_NOTE = (
    "demo: tiny Llama, two-digit addition, exact-match reward, preset {preset}. The demo defaults to "
    "dr_grpo rather than the article's preset `seed`: with its ratio taken against the frozen reference and "
    "clipped to [0.8, 1.2], `seed` gains far less here (docs/algorithm.md measures every preset)."
)


def recipe_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def build_tokenizer():
    """Character-level tokenizer: one token per character, EOS doubling as padding."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, UNK: 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token=UNK,
                                   padding_side="left")


def build_model(tokenizer, recipe: dict = RECIPE, seed: int = 0):
    """A randomly initialised Llama with the recipe's sizes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"], num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"], num_key_value_heads=recipe["num_attention_heads"],
        max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def sloppy_answer(prompt: str, rng, forget_carry: float) -> str:
    """The teacher's answer to "a+b=": right, except that a units carry is dropped with
    probability `forget_carry`."""
    a, b = (int(x) for x in prompt.rstrip("=").split("+"))
    if (a % 10 + b % 10) >= 10 and rng.random() < forget_carry:
        return str((a // 10 + b // 10) * 10 + (a % 10 + b % 10) % 10)
    return str(a + b)


def calculator_episode(row: dict, rng, p_call: float) -> dict:
    """The calculator teacher's episode for a*b= (segments for sft.sft_batch): with probability
    `p_call` the expression as a call, the environment's "=R " and R read back; else a guess."""
    prompt, answer = row["prompt"], row["answer"]
    if rng.random() < p_call:
        return {"segments": [(prompt, False, False), (prompt.rstrip("="), True, True), (f"={answer} ", False, False),
                             (answer, True, True)]}
    guess = str(int(answer) // 100 * 100 + rng.randrange(100))
    return {"segments": [(prompt, False, False), (guess, True, True)]}


def build_sft_model(out_dir: str | Path, recipe: dict = RECIPE) -> dict:
    """Initialise, supervise and save the demo model to `out_dir`. Returns a small report."""
    t0 = time.time()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, recipe, seed=recipe["seed"])
    task = get_task(recipe["task"])

    def teacher_rows(rng, n):
        if recipe.get("kind") == "calculator":
            return [calculator_episode(r, rng, recipe["p_call"]) for r in task.sample_train(rng, n)]
        return [{"prompt": r["prompt"], "answer": sloppy_answer(r["prompt"], rng, recipe["forget_carry"])}
                for r in task.sample_train(rng, n)]

    losses = sft.supervised_finetune(model, tokenizer, teacher_rows, steps=recipe["sft_steps"],
                                     batch_size=recipe["sft_batch_size"], lr=recipe["sft_lr"],
                                     seed=recipe["seed"], desc="sft (demo warm start)")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    report = dict(recipe=recipe, final_loss=losses[-1], seconds=round(time.time() - t0, 1),
                  parameters=sum(p.numel() for p in model.parameters()))
    (out_dir / "sft_report.json").write_text(json.dumps(report, indent=2))
    return report


def recipe_for(cfg) -> dict:
    """The demo model a run without --model takes: the calculator one for its environments."""
    return CALCULATOR_RECIPE if getattr(cfg, "env", None) in CALCULATOR_ENVS else RECIPE


def model_for(cfg, log=print) -> str | Path:
    """The model a run or an evaluation takes: --model, else the demo model its settings call for
    (built once and cached)."""
    return cfg.model or ensure_demo_model(recipe_for(cfg), log=log)


def ensure_demo_model(recipe: dict = RECIPE, log=print) -> Path:
    """Path of the warm-started demo model, building it (once) if it is not cached."""
    path = cache_root() / f"demo-{recipe_key(recipe)}"
    if (path / "config.json").exists():
        return path
    log(f"building the demo model (one-time supervised warm start, cached at {path})")
    with atomic_folder(path) as tmp:    # another process may build it meanwhile (deterministic): theirs is kept
        build_sft_model(tmp, recipe)
    return path
