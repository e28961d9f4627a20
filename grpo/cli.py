"""The `grpo` command: train, eval, explain, sft.

Flags are generated from `TrainConfig`: every field `name` is `--name-in-kebab-case`, with the
field's docstring as help. Only flags given on the command line override the YAML file.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
import traceback
import warnings

from .config import ALGORITHM_FIELDS, DEMO_DEFAULTS, FIELDS, PRESETS, check_split, field_type, load_yaml, resolve
from .errors import ConfigError, EnvironmentFailure, NonFinite, RewardError, Stopped


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
        elif tp is dict:
            group.add_argument(flag(name), metavar="JSON", **kw)
        else:
            metavar = "{" + ",".join(choices) + "}" if choices else tp.__name__.upper()
            group.add_argument(flag(name), metavar=metavar, **kw)


def config_from_args(args: argparse.Namespace, demo: bool | None = None):
    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    yaml_values = load_yaml(args.config) if getattr(args, "config", None) else {}
    return resolve(yaml_values, overrides, yaml_path=getattr(args, "config", "") or "", demo=demo)


def _explain_parser(sub) -> None:
    """`grpo explain`'s options: the settings, and the inputs of one computation."""
    e = sub.add_parser("explain", help="Walk through one advantage and loss computation, every number shown.",
                       description="Without --rewards: the article's worked example (B=1, G=2, T=(3,4), r=(0.8,0.6)). "
                       "With --all-losses, or --logp or --advantages: the loss on every "
                       "token under every registered policy loss (without --logp, on built-in log-probs). A value "
                       "that starts with '-' is written --logp=-1.5,-0.8.")
    add_config_flags(e)
    e.add_argument("--rewards", help='Rewards, groups separated by ";", values by ",", e.g. "0.8,0.6;1,0,0,1".')
    e.add_argument("--lengths", help="Completion lengths in the same shape as --rewards (not needed with --logp).")
    e.add_argument("--logp", metavar="LOGPS", help="log pi_theta of each token: one sequence per completion in group "
                   "order, ';' between sequences, ',' between tokens, e.g. --logp=-1.5,-0.8,-2.3;-1.1,-0.5 (lengths "
                   "may differ; they are the completions' lengths).")
    e.add_argument("--old-logp", metavar="LOGPS", help="log pi_old of each token, as --logp (default: pi_old = "
                   "pi_theta, the first update). The ratio's denominator with ratio_vs=old.")
    e.add_argument("--ref-logp", metavar="LOGPS", help="log pi_ref of each token, as --logp: the KL term's reference "
                   "(and the ratio's denominator with ratio_vs=ref). Without it, no KL term.")
    e.add_argument("--sampler-logp", metavar="LOGPS", help="log pi_sampler of each token, as --logp: what the "
                   "sampler recorded (default: pi_old's, nothing to correct). The rollout correction's weight is "
                   "pi_old / pi_sampler.")
    e.add_argument("--entropy", metavar="VALUES", help="Each token's entropy (>= 0), as --logp: read by "
                   "top_entropy_quantile (the tokens kept) and entropy_coef (the bonus).")
    e.add_argument("--advantages", metavar="VALUES", help="One advantage per completion, in --rewards' groups or as "
                   "one flat list, on every token of that completion, in place of the estimator's.")
    e.add_argument("--component", action="append", metavar="NAME[:WEIGHT]=SCORES",
                   help="Repeatable: one reward function's scores in --rewards' syntax, with its weight (default 1), "
                        "e.g. --component correct=1,0 --component format:0.5=1,1. The reward is their weighted "
                        "sum (give them instead of --rewards); advantage_estimator gdpo normalises them one by one.")
    e.add_argument("--all-losses", action="store_true", help="Show every registered policy loss on every token "
                   "(implied by --logp and --advantages).")
    e.add_argument("--json", action="store_true", help="Print one JSON object instead of the walk-through.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grpo", description="Train language models with GRPO (Group Relative Policy Optimization).")
    p.add_argument("--debug", action="store_true", help="On an error, also print its traceback (for a bug report; "
                                                       "also GRPO_DEBUG=1). May be given anywhere on the line.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="Train with GRPO (no --model: the built-in demo).",
                       description="Train a causal LM with GRPO. Presets: " + ", ".join(PRESETS) +
                       ". Without --model, trains the built-in demo (tiny Llama, integer addition).")
    add_config_flags(t)
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="Data-parallel processes on this machine (each process takes "
                        "prompts_per_step / N prompts). Several machines: run torchrun yourself (docs/scaling.md).")

    _explain_parser(sub)

    v = sub.add_parser("eval", help="Held-out accuracy, pass@k and mean reward of a model on a task.",
                       description="Evaluate --model (default: the demo model) on the held-out split of --task or "
                       "--dataset. Takes the same settings as train; the sampling ones apply with --samples.")
    add_config_flags(v)
    v.add_argument("--samples", type=int, default=1, help="Completions per problem (k of pass@k); > 1 samples.")
    v.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=None,
                   help="Greedy decoding (default: on with --samples 1, off otherwise).")
    v.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")

    r = sub.add_parser("report", help="Write a run folder's curves and completions as one HTML page.",
                       description="Write RUN_DIR/report.html: one self-contained page (opens with no network) "
                       "with the run's curves and a browser of its logged completions.")
    r.add_argument("run_dir", metavar="RUN_DIR", help="A run's output folder (where metrics.jsonl is).")
    r.add_argument("--out", help="Write the page here instead of RUN_DIR/report.html.")
    r.add_argument("--png", action="store_true",
                   help="Also draw each chart as a PNG file, in <page name>-png/ beside the page (needs matplotlib).")

    s = sub.add_parser("sft", help="Build the demo model: a tiny Llama warm-started by supervised fine-tuning.")
    s.add_argument("--output-dir", help="Write the model here instead of the cache (~/.cache/grpo or $GRPO_CACHE).")
    return p


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()     # our own bars only


def cmd_train(args, argv: list[str]) -> int:
    if args.nproc < 1:
        raise ConfigError(f"--nproc: must be >= 1, got {args.nproc}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        cfg = config_from_args(args)             # report a bad setting here, not once per process
        check_split(cfg, args.nproc)
        if cfg.device not in ("auto", "cpu"):
            from .device import pick_device
            pick_device(cfg.device)              # a device this machine lacks: one line, before N processes
        from .parallel.launch import launch
        return launch(args.nproc, _without_nproc(argv))
    cfg = config_from_args(args)                 # a bad setting: one line, before torch loads
    if cfg.heap_reuse:
        from .device import pick_device
        if pick_device(cfg.device).type == "cpu":
            _process_memory_policy()
    _quiet_transformers()
    from .api import fit
    summary = fit(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0
    if "eval_after" in summary:
        b, a = summary["eval_before"], summary["eval_after"]
        key, name = ("accuracy", "accuracy") if "accuracy" in a else ("mean_reward", "reward")
        change = (f"{b[key]:.1%} -> {a[key]:.1%} ({(a[key] - b[key]) * 100:+.1f} points)" if key == "accuracy"
                  else f"{b[key]:.3f} -> {a[key]:.3f} ({a[key] - b[key]:+.3f})")
        extra = f", reward {b['mean_reward']:.3f} -> {a['mean_reward']:.3f}" if key == "accuracy" else ""
        print(f"done: held-out {name} {change}{extra}; outputs in {summary['output_dir']}")
    else:
        print(f"done: outputs in {summary['output_dir']}")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def cmd_explain(args) -> int:
    from .explain import main as explain_main
    # explain shows the algorithm's defaults (preset seed), never the demo's training sizes
    return explain_main(config_from_args(args, demo=False), args.rewards, args.lengths, args.json,
                        logp=args.logp, old_logp=args.old_logp, ref_logp=args.ref_logp,
                        sampler_logp=args.sampler_logp, entropy=args.entropy, advantages=args.advantages,
                        components=args.component, all_losses=args.all_losses)


def cmd_eval(args) -> int:
    from .device import pick_device
    from .config import Levers
    from .data.tasks import build_task
    from .models.loading import load_model
    from .rewards import build_reward_fns
    from .train.evaluate import evaluate
    from .train.plug import plug
    cfg = config_from_args(args)
    _quiet_transformers()
    if args.samples < 1:
        raise ConfigError(f"--samples: must be >= 1, got {args.samples}")
    task = build_task(cfg)
    env = None
    if cfg.env:
        from .envs.load import load_env
        env = load_env(cfg.env, task, cfg)
    from .demo import model_for
    path = model_for(cfg)
    device = pick_device(cfg.device)
    model, tok = load_model(path, device, cfg.gguf_file)
    greedy = args.greedy if args.greedy is not None else args.samples == 1
    decoding = "greedy" if greedy else f"sampled, T={cfg.temperature}"
    if env is not None:
        from .envs import episode_limits
        from .train.evaluate import evaluate_episodes
        res = evaluate_episodes(model, tok, task, env, n=cfg.eval_size, batch_size=cfg.eval_batch_size,
                                max_new_tokens=cfg.max_new_tokens, limits=episode_limits(cfg),
                                system_prompt=cfg.system_prompt, chat_template=cfg.chat_template, seed=cfg.seed,
                                engine=plug(Levers.of(cfg), device, cfg.engine).engine, samples=args.samples, greedy=greedy,
                                temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
        return _print_eval({"model": str(path), "task": task.name, "env": cfg.env, "decoding": decoding, **res},
                           args.json)
    reward_fns = build_reward_fns(cfg, task, device)
    try:
        res = evaluate(model, tok, task, n=cfg.eval_size, batch_size=cfg.eval_batch_size,
                       max_new_tokens=cfg.max_new_tokens, reward_fns=reward_fns, system_prompt=cfg.system_prompt,
                       chat_template=cfg.chat_template, samples=args.samples, greedy=greedy,
                       temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed,
                       engine=plug(Levers.of(cfg), device, cfg.engine).engine)
    finally:
        reward_fns.close()
    return _print_eval({"model": str(path), "task": task.name, "decoding": decoding, **res}, args.json)


def _print_eval(res: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(res))
    else:
        for key, value in res.items():
            print(f"{key:<14}{value:.3f}" if isinstance(value, float) else f"{key:<14}{value}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .report.run import ReportError
    try:
        write_report(args.run_dir, args.out, png=args.png)
    except ReportError as e:
        raise ConfigError(str(e)) from None
    return 0


def cmd_sft(args) -> int:
    _quiet_transformers()
    from .demo import build_sft_model, ensure_demo_model
    if args.output_dir:
        report = build_sft_model(args.output_dir)
        print(json.dumps(report, indent=2))
        print(f"demo model written to {args.output_dir}")
    else:
        print(f"demo model: {ensure_demo_model()}")
    return 0


def _process_memory_policy() -> None:
    """`grpo train`'s allocation policy on a CPU (heap_reuse), set before the run allocates: every
    large block its own mapping, returned to the system on free, the phases that reuse the heap
    marked by the levers (grpo/fast/heap.py; nothing without it). GPU runs and the other commands
    keep glibc's own behaviour."""
    try:
        from .fast.heap import return_freed_memory
    except ImportError:
        return
    return_freed_memory()


def _debug(argv: list[str]) -> tuple[bool, list[str]]:
    """--debug anywhere on the line (or GRPO_DEBUG=1): errors show their traceback too."""
    on = "--debug" in argv or os.environ.get("GRPO_DEBUG", "") not in ("", "0")
    if on:
        os.environ["GRPO_DEBUG"] = "1"          # --nproc's processes inherit it
    return on, [a for a in argv if a != "--debug"]


def _error(command: str, message: str) -> None:
    """The one-line error. Under --nproc each process hands its line to the launcher, which prints
    each different line once (grpo/parallel/launch.py)."""
    line = f"grpo {command}: error: {message}"
    to = os.environ.get("GRPO_ERROR_FILE")
    if to:
        try:
            with open(to, "w") as f:
                f.write(message)
            return
        except OSError:
            pass
    print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    debug, argv = _debug(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        return {"explain": cmd_explain, "eval": cmd_eval, "sft": cmd_sft, "report": cmd_report}[args.command](args)
    except (ConfigError, RewardError, EnvironmentFailure, NonFinite) as e:
        if debug:
            traceback.print_exc()
        _error(args.command, str(e))
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if debug:
            traceback.print_exc()
        where = f" writing {e.filename}" if e.filename else ""
        _error(args.command, f"no space left on the device{where}; free some space (a run keeps its last complete "
                             "checkpoint, see --keep-checkpoints), then continue with --resume latest")
        return 2
    except Stopped as e:
        if os.environ.get("RANK", "0") == "0":       # every process stops; rank 0 says where
            print(f"grpo {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"grpo {args.command}: interrupted; outputs so far are where they were written "
              "(checkpoints, if any, under <output_dir>/checkpoints)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
