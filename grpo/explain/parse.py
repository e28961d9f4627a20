"""`grpo explain`'s inputs: the option texts (`--rewards`, `--lengths`, `--logp`, ...) parsed and
checked, every error naming the option, the group or sequence and the value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import ConfigError

DEFAULT_REWARDS = "0.8,0.6"
DEFAULT_LENGTHS = "3,4"
# The built-in per-token log-probs (`--all-losses` without --logp): illustrative values for the
# article's two completions of 3 and 4 tokens, chosen so that the losses differ. Token 1 of sequence
# 1 is the article's (log pi_theta -1.5, log pi_ref -1.6). Against pi_ref, l = 0.1, 0.5, -0.2 and
# -0.1, 0.1, -1.2, 1.3 (the clip binds above at sequence 1 token 2 and below at sequence 2 token 3;
# dual_clip's c at sequence 2 token 4); against pi_old, l = 0.1, 0.2, -0.1 and 0.1, -0.1, -0.2, 0.
DEFAULT_LOGP = "-1.5,-0.8,-2.3;-1.1,-0.5,-2.8,-0.7"
DEFAULT_OLD_LOGP = "-1.6,-1.0,-2.2;-1.2,-0.4,-2.6,-0.7"
DEFAULT_REF_LOGP = "-1.6,-1.3,-2.1;-1.0,-0.6,-1.6,-2.0"
# The sampler's log-probs, apart from pi_old by log pi_old - log pi_sampler = -0.1, 0.1, 0 and 0.1, 0,
# 1.8, 0 (the rollout correction's weight e^that: tis caps sequence 2 token 3, icepop masks it), and
# each token's entropy (the entropy selection and bonus read them).
DEFAULT_SAMPLER_LOGP = "-1.5,-1.1,-2.2;-1.3,-0.4,-4.4,-0.7"
DEFAULT_ENTROPY = "0.9,0.4,1.6;0.3,1.2,2.1,0.5"


# ------------------------------------------------------------------------------ parsing
def parse_groups(text: str, name: str, cast: Callable = float) -> list[list]:
    """"0.8,0.6;1,0" -> [[0.8, 0.6], [1.0, 0.0]]: groups split by `;`, values by `,`.

    `name` is the option the text came from (`--rewards`, `--lengths`); it is named in every error.
    Every group must have the same size G >= 2. With cast=int the values are lengths: whole
    numbers >= 1. Floats must be finite."""
    if text is None or not text.strip():
        raise ConfigError(f"{name}: expected groups like '0.8,0.6;1,0' (';' between groups, ',' between values), got nothing")
    groups: list[list] = []
    for b, chunk in enumerate(text.split(";"), start=1):
        items = [s.strip() for s in chunk.split(",")]
        if items == [""]:
            raise ConfigError(f"{name}: group {b} is empty in {text!r}")
        groups.append([_parse_value(s, name, b, cast) for s in items])
    G = len(groups[0])
    for b, group in enumerate(groups, start=1):
        if len(group) != G:
            raise ConfigError(f"{name}: group {b} has {len(group)} values but group 1 has {G}; every group needs the same size G")
    if G < 2:
        raise ConfigError(f"{name}: each group has {G} value; GRPO compares completions of one prompt, so G must be >= 2")
    return groups


def _parse_value(s: str, name: str, b: int, cast: Callable):
    kind = "a whole number >= 1" if cast is int else "a finite number"
    try:
        v = cast(s)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: group {b} has the bad value {s!r}; expected {kind}") from None
    if (cast is int and v < 1) or (isinstance(v, float) and not math.isfinite(v)):
        raise ConfigError(f"{name}: group {b} has the bad value {s!r}; expected {kind}")
    return v


def parse_sequences(text: str, name: str, entropies: bool = False) -> list[list[float]]:
    """"-1.5,-0.8;-1.1" -> [[-1.5, -0.8], [-1.1]]: one sequence of per-token log-probs (or, with
    `entropies`, entropies >= 0) per completion (in group order), split by `;`, tokens by `,`.
    Sequences may differ in length. `name` is the option (`--logp`, `--old-logp`, `--ref-logp`,
    `--sampler-logp`, `--entropy`), named in every error with the sequence and token."""
    what = "entropies" if entropies else "log-probs"
    if text is None or not text.strip():
        raise ConfigError(f"{name}: expected one sequence of {what} per completion, like '-1.5,-0.8,-2.3;-1.1,-0.5' "
                          "(';' between sequences, ',' between tokens), got nothing")
    seqs: list[list[float]] = []
    for i, chunk in enumerate(text.split(";"), start=1):
        items = [s.strip() for s in chunk.split(",")]
        if items == [""]:
            raise ConfigError(f"{name}: sequence {i} is empty in {text!r}")
        row = []
        for t, s in enumerate(items, start=1):
            try:
                v = float(s)
            except ValueError:
                v = None
            if v is None or not math.isfinite(v) or (v < 0 if entropies else v > 0):
                raise ConfigError(f"{name}: sequence {i}, token {t} has the bad value {s!r}; expected "
                                  + ("a finite entropy >= 0" if entropies else "a finite log-probability <= 0"))
            row.append(v)
        seqs.append(row)
    return seqs


def parse_components(specs: list[str]) -> dict[str, tuple[list[list[float]], float]]:
    """`--component NAME[:WEIGHT]=SCORES`, repeatable: one reward function's scores (in --rewards'
    syntax) and its weight (default 1) -> {name: (scores (B, G), weight)}. The reward is their
    weighted sum; the `gdpo` estimator normalises them one by one."""
    out: dict[str, tuple[list[list[float]], float]] = {}
    for spec in specs:
        head, eq, scores = spec.partition("=")
        name, colon, weight_text = head.strip().partition(":")
        name = name.strip()
        if not eq or not name:
            raise ConfigError(f"--component: expected NAME[:WEIGHT]=SCORES such as 'correct:0.8=1,0;0,1', got {spec!r}")
        try:
            weight = float(weight_text) if colon else 1.0
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise ConfigError(f"--component {name}: the bad weight {weight_text.strip()!r}; expected a finite number")
        if name in out:
            raise ConfigError(f"--component: {name!r} is given twice; give each reward function once")
        out[name] = (parse_groups(scores, f"--component {name}", float), weight)
    first = next(iter(out))
    for name, (scores, _) in out.items():
        if [len(g) for g in scores] != [len(g) for g in out[first][0]]:
            raise ConfigError(f"--component {name}: groups of sizes {[len(g) for g in scores]} do not match "
                              f"--component {first}'s {[len(g) for g in out[first][0]]}; every function scores "
                              "every completion")
    return out


def weighted_sum(components: dict[str, tuple[list[list[float]], float]]) -> list[list[float]]:
    """The reward of each completion: sum_k w_k r_k, as the trainer sums its reward functions."""
    total = sum(w * torch.tensor(scores, dtype=torch.float64) for scores, w in components.values())
    return total.tolist()


@dataclass
class TokenInputs:
    """Per-token inputs of the loss step, one row per completion in group order (rows may differ in
    length). `old_logp` None: pi_old = pi_theta (the first update); `ref_logp` None: no reference, so
    no KL term; `sampler_logp` None: the sampler's log-probs are pi_old's (nothing to correct);
    `entropy`: each token's entropy (the entropy selection and bonus; None: neither can be shown).
    `advantages` (B, G) or N flat: one per completion, on each of its tokens, in place of the
    estimator's."""
    logp: list[list[float]]
    old_logp: list[list[float]] | None = None
    ref_logp: list[list[float]] | None = None
    advantages: list[list[float]] | None = None
    sampler_logp: list[list[float]] | None = None
    entropy: list[list[float]] | None = None
    builtin: bool = False

    @classmethod
    def default(cls, advantages: list[list[float]] | None = None) -> "TokenInputs":
        return cls(parse_sequences(DEFAULT_LOGP, "--logp"), parse_sequences(DEFAULT_OLD_LOGP, "--old-logp"),
                   parse_sequences(DEFAULT_REF_LOGP, "--ref-logp"), advantages,
                   parse_sequences(DEFAULT_SAMPLER_LOGP, "--sampler-logp"),
                   parse_sequences(DEFAULT_ENTROPY, "--entropy", entropies=True), builtin=True)


def check_shapes(rewards: list[list[float]], lengths: list[list[int]], components: dict | None = None) -> None:
    """--lengths (and each --component's scores) in --rewards' groups; every length a whole number >= 1."""
    for name, (scores, _) in (components or {}).items():
        if [len(g) for g in scores] != [len(g) for g in rewards]:
            raise ConfigError(f"--component {name}: groups of sizes {[len(g) for g in scores]} do not match the "
                              f"rewards' {[len(g) for g in rewards]}")
    shape_r = [len(g) for g in rewards]
    shape_l = [len(g) for g in lengths]
    if shape_r != shape_l:
        raise ConfigError(f"--lengths: groups of sizes {shape_l} do not match --rewards' groups of sizes {shape_r}; "
                          "give one length per reward")
    for b, group in enumerate(lengths, start=1):
        for T in group:
            if isinstance(T, bool) or not isinstance(T, int) or T < 1:
                raise ConfigError(f"--lengths: group {b} has the bad value {T!r}; expected a whole number >= 1")


def check_tokens(tokens: TokenInputs, rewards: list[list[float]], lengths: list[list[int]]) -> None:
    """--logp has one row per completion, each as long as its completion; --old-logp and --ref-logp
    match --logp; --advantages has one value per completion."""
    N = sum(len(g) for g in rewards)
    T = [t for g in lengths for t in g]
    shape = f"{len(rewards)} group{'s' if len(rewards) > 1 else ''} of G = {len(rewards[0])}"
    if len(tokens.logp) != N:
        raise ConfigError(f"--logp: {len(tokens.logp)} sequence{'s' if len(tokens.logp) != 1 else ''}, but there are "
                          f"{N} completions ({shape}); give one sequence per completion, in group order")
    for i, (row, T_i) in enumerate(zip(tokens.logp, T), start=1):
        if len(row) != T_i:
            raise ConfigError(f"--logp: sequence {i} has {len(row)} tokens but --lengths gives completion {i} a "
                              f"length of {T_i}; --lengths can be left out, --logp gives the lengths")
    for name, rows in (("--old-logp", tokens.old_logp), ("--ref-logp", tokens.ref_logp),
                       ("--sampler-logp", tokens.sampler_logp), ("--entropy", tokens.entropy)):
        if rows is None:
            continue
        if len(rows) != N:
            raise ConfigError(f"{name}: {len(rows)} sequence{'s' if len(rows) != 1 else ''} but --logp has {N}; "
                              "give one sequence per completion, in group order")
        for i, (row, T_i) in enumerate(zip(rows, T), start=1):
            if len(row) != T_i:
                raise ConfigError(f"{name}: sequence {i} has {len(row)} tokens but --logp's sequence {i} has {T_i}")
    if tokens.advantages is not None:
        flat = [a for g in tokens.advantages for a in g]
        if [len(g) for g in tokens.advantages] not in ([len(g) for g in rewards], [N]):
            raise ConfigError(f"--advantages: {len(flat)} values in groups of sizes {[len(g) for g in tokens.advantages]}, "
                              f"but the completions are {shape}; give one advantage per completion")


def _lengths_of(seqs: list[list[float]], rewards: list[list[float]]) -> list[list[int]]:
    """--logp's sequence lengths in --rewards' groups."""
    sizes = [len(g) for g in rewards]
    if len(seqs) != sum(sizes):
        raise ConfigError(f"--logp: {len(seqs)} sequence{'s' if len(seqs) != 1 else ''}, but there are {sum(sizes)} "
                          f"completions ({len(sizes)} group{'s' if len(sizes) > 1 else ''} of G = {sizes[0]}); "
                          "give one sequence per completion, in group order")
    out, i = [], 0
    for n in sizes:
        out.append([len(s) for s in seqs[i:i + n]])
        i += n
    return out


def read_inputs(rewards_text: str | None, lengths_text: str | None, *, logp: str | None = None,
                old_logp: str | None = None, ref_logp: str | None = None, sampler_logp: str | None = None,
                entropy: str | None = None, advantages: str | None = None, components: list[str] | None = None,
                all_losses: bool = False):
    """The options' texts -> (rewards, lengths, TokenInputs or None, components or None): the
    article's example by default; --rewards (or --component) needs --lengths or --logp. Any of the
    per-token options (or all_losses) turns the loss step into every registered loss on every token;
    without --logp, on the built-in log-probs."""
    comps = parse_components(components) if components else None
    if comps is not None and rewards_text is not None:
        raise ConfigError("--component: give --rewards or --component, not both; the reward is the weighted sum "
                          "of the components")
    given = "--component" if comps is not None else "--rewards" if rewards_text is not None else None
    for name, value in (("--old-logp", old_logp), ("--ref-logp", ref_logp), ("--sampler-logp", sampler_logp),
                        ("--entropy", entropy)):
        if value is not None and logp is None:
            raise ConfigError(f"{name}: given without --logp; pass the policy's log-probs with --logp too "
                              "(one sequence per completion)")
    if given is None and lengths_text is not None:
        raise ConfigError("--lengths: given without --rewards; pass both, or neither for the article's example")
    if given is None:
        rewards = parse_groups(DEFAULT_REWARDS, "--rewards", float)
    else:
        rewards = weighted_sum(comps) if comps is not None else parse_groups(rewards_text, "--rewards", float)
    seqs = parse_sequences(logp, "--logp") if logp is not None else None
    if lengths_text is not None:
        lengths = parse_groups(lengths_text, "--lengths", int)
    elif seqs is not None:
        lengths = _lengths_of(seqs, rewards)
    elif given is None:
        lengths = parse_groups(DEFAULT_LENGTHS, "--lengths", int)
    else:
        raise ConfigError(f"{given}: given without --lengths; pass one completion length per reward, e.g. "
                          "--lengths '3,4' (or per-token log-probs with --logp, which give the lengths)")
    tokens = None
    if all_losses or any(v is not None for v in (logp, advantages)):
        adv = parse_groups(advantages, "--advantages", float) if advantages is not None else None
        if seqs is not None:
            opt = lambda text, name, **kw: parse_sequences(text, name, **kw) if text is not None else None  # noqa: E731
            tokens = TokenInputs(seqs, opt(old_logp, "--old-logp"), opt(ref_logp, "--ref-logp"), adv,
                                 opt(sampler_logp, "--sampler-logp"), opt(entropy, "--entropy", entropies=True))
        elif [[len(g) for g in rewards], lengths] == [[2], [[3, 4]]]:
            tokens = TokenInputs.default(adv)
        else:
            raise ConfigError(f"--logp: the built-in log-probs are for the article's two completions of 3 and 4 tokens; "
                              f"for these completions (lengths {'; '.join(','.join(map(str, g)) for g in lengths)}) "
                              "give --logp, one sequence per completion")
    return rewards, lengths, tokens, comps
