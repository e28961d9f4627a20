"""The `grpo` command: train, eval, explain, sft.

Flags are generated from `TrainConfig`: every field `name` is `--name-in-kebab-case`, with the
field's docstring as help. Only flags given on the command line override the YAML file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings

from .rewards import RewardError
from .config import ALGORITHM_FIELDS, DEMO_DEFAULTS, FIELDS, PRESETS, ConfigError, field_type, load_yaml, resolve


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings; flags override it.")
    groups = {"algorithm": parser.add_argument_group("algorithm (set by --preset, each can be overridden)"),
              "other": parser.add_argument_group("run, sampling and optimisation")}
    for name, f in FIELDS.items():
        tp, choices, optional = field_type(name)
        group = groups["algorithm" if name in ALGORITHM_FIELDS else "other"]
        if name in ALGORITHM_FIELDS:
            default = f"{PRESETS['seed'][name]} (preset seed; each preset sets its own)"
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if name in DEMO_DEFAULTS:
                default = f"{default}; the demo (no --model): {DEMO_DEFAULTS[name]}"
        help_text = f"{f.metadata['help']} [default: {default}]"
        kw = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if tp is bool:
            group.add_argument(flag(name), action=argparse.BooleanOptionalAction, **kw)
        elif tp is list:
            group.add_argument(flag(name), action="append", metavar="SPEC", **kw)
        else:
            metavar = "{" + ",".join(choices) + "}" if choices else tp.__name__.upper()
            group.add_argument(flag(name), metavar=metavar, **kw)


def config_from_args(args: argparse.Namespace, demo: bool | None = None):
    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    yaml_values = load_yaml(args.config) if getattr(args, "config", None) else {}
    return resolve(yaml_values, overrides, yaml_path=getattr(args, "config", "") or "", demo=demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grpo", description="Train language models with GRPO (Group Relative Policy Optimization).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="Train with GRPO (no --model: the built-in demo).",
                       description="Train a causal LM with GRPO. Presets: " + ", ".join(PRESETS) +
                       ". Without --model, trains the built-in demo (tiny Llama, integer addition).")
    add_config_flags(t)

    e = sub.add_parser("explain", help="Walk through one advantage and loss computation, every number shown.",
                       description="Without --rewards: the article's worked example (B=1, G=2, T=(3,4), r=(0.8,0.6)).")
    add_config_flags(e)
    e.add_argument("--rewards", help='Rewards, groups separated by ";", values by ",", e.g. "0.8,0.6;1,0,0,1".')
    e.add_argument("--lengths", help="Completion lengths in the same shape as --rewards.")
    e.add_argument("--json", action="store_true", help="Print one JSON object instead of the walk-through.")

    v = sub.add_parser("eval", help="Held-out accuracy (greedy pass@1) of a model on a task.")
    v.add_argument("--model", help="Model folder (default: the built-in demo model).")
    v.add_argument("--task", default="arithmetic")
    v.add_argument("--eval-size", type=int, default=200)
    v.add_argument("--eval-batch-size", type=int, default=256)
    v.add_argument("--max-new-tokens", type=int, default=8)
    v.add_argument("--device", default="auto")
    v.add_argument("--json", action="store_true")

    s = sub.add_parser("sft", help="Build the demo model: a tiny Llama warm-started by supervised fine-tuning.")
    s.add_argument("--output-dir", help="Write the model here instead of the cache (~/.cache/grpo or $GRPO_CACHE).")
    return p


def cmd_train(args) -> int:
    from .train import train
    summary = train(config_from_args(args))
    if "eval_after" in summary:
        b, a = summary["eval_before"]["accuracy"], summary["eval_after"]["accuracy"]
        print(f"done: held-out accuracy {b:.1%} -> {a:.1%} ({(a - b) * 100:+.1f} points); outputs in {summary['output_dir']}")
    else:
        print(f"done: outputs in {summary['output_dir']}")
    return 0


def cmd_explain(args) -> int:
    from .explain import main as explain_main
    # explain shows the algorithm's defaults (preset seed), never the demo's training sizes
    return explain_main(config_from_args(args, demo=False), args.rewards, args.lengths, args.json)


def cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .policy import load_model, pick_device
    from .tasks import get_task
    if args.model:
        path = args.model
    else:
        from .demo import ensure_demo_model
        path = ensure_demo_model()
    model, tok = load_model(path, pick_device(args.device))
    res = evaluate(model, tok, get_task(args.task), n=args.eval_size, batch_size=args.eval_batch_size,
                   max_new_tokens=args.max_new_tokens)
    res = {"model": str(path), "task": args.task, **res}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{'model':<12}{res['model']}\n{'task':<12}{res['task']}\n{'n':<12}{res['n']}\n"
              f"{'accuracy':<12}{res['accuracy']:.3f}\n{'mean reward':<12}{res['mean_reward']:.3f}")
    return 0


def cmd_sft(args) -> int:
    from .demo import build_sft_model, ensure_demo_model
    if args.output_dir:
        report = build_sft_model(args.output_dir)
        print(json.dumps(report, indent=2))
        print(f"demo model written to {args.output_dir}")
    else:
        print(f"demo model: {ensure_demo_model()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()     # our own bars only
    try:
        return {"train": cmd_train, "explain": cmd_explain, "eval": cmd_eval, "sft": cmd_sft}[args.command](args)
    except (ConfigError, RewardError) as e:
        print(f"grpo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
