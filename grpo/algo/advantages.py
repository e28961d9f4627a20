"""From rewards to per-token advantages: the part of GRPO that replaces PPO's critic and GAE.

Pure tensor functions; no model, tokenizer or I/O. Shapes: B prompts, G completions each,
N = B*G sequences, T = longest completion. Sequence i owns `lengths[i]` valid tokens, t = 1..T_i.

The pipeline, each step a named setting:
  rewards (B, G)
    -> scale_rewards          none | group z-score | batch z-score          (article, "reward normalisation")
    -> sequence_advantages    A_i = r_i - r_bar, r_bar over group | batch | window of batches
    -> token_advantages       uniform | mean | discounted | discounted_over_length
    -> normalize_tokens       optional (A - mean) / (std + 1e-8) over all valid tokens
Standard deviations are population ones (numpy's np.std), as in the article.
A set of equal values (a degenerate group, or a batch with one advantage) has std 0: its
advantages are exactly 0, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .registry import Registry

EPS = 1e-8


def _zscore(x: Tensor, dim: int | None) -> Tensor:
    """(x - mean) / (std + 1e-8) along `dim` (all elements if None); exactly 0 where all values are equal."""
    if dim is None:
        mean, std = x.mean(), x.std(unbiased=False)
        equal = x.max() == x.min()
    else:
        mean, std = x.mean(dim, keepdim=True), x.std(dim, unbiased=False, keepdim=True)
        equal = x.amax(dim, keepdim=True) == x.amin(dim, keepdim=True)
    return torch.where(equal, torch.zeros_like(x), (x - mean) / (std + EPS))


def zero_variance_groups(rewards: Tensor) -> Tensor:
    """(B,) bool: groups whose G rewards are all equal (they carry no learning signal)."""
    return rewards.amax(1) == rewards.amin(1)


def scale_rewards(rewards: Tensor, mode: str) -> Tensor:
    """rewards (B, G) -> scaled rewards (B, G)."""
    if mode == "none":
        return rewards
    if mode == "group":
        return _zscore(rewards, dim=1)
    if mode == "batch":
        return _zscore(rewards, dim=None)
    raise ValueError(f"unknown reward scaling {mode!r}")


def baseline_values(rewards: Tensor, baseline: str, history: list[Tensor] | None = None) -> Tensor:
    """r_bar of every sequence (B, G): its group's mean (`group`), the mean of the other G-1
    rewards of its group (`leave_one_out`, RLOO: Kool et al. 2019; Ahmadian et al. 2024), the
    batch's mean (`batch`) or the mean over this and the earlier batches of `history` (`window`)."""
    if baseline == "group":
        return rewards.mean(1, keepdim=True).expand_as(rewards)
    if baseline == "leave_one_out":
        G = rewards.shape[1]
        return (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
    return _pool(rewards, baseline, history).mean().expand_as(rewards)


def _pool(rewards: Tensor, baseline: str, history: list[Tensor] | None) -> Tensor:
    """The rewards a `batch` or `window` baseline averages, flat."""
    if baseline == "batch":
        return rewards.flatten()
    if baseline == "window":
        return torch.cat([h.flatten() for h in (history or [])] + [rewards.flatten()])
    raise ValueError(f"unknown baseline {baseline!r}")


def sequence_advantages(rewards: Tensor, baseline: str, history: list[Tensor] | None = None) -> Tensor:
    """A_i = r_i - r_bar (baseline_values).  rewards (B, G); history: earlier batches' rewards for `window`.
    `leave_one_out` is G/(G-1) times the `group` advantage."""
    if baseline in ("group", "leave_one_out"):
        adv = rewards - baseline_values(rewards, baseline)
        # an all-equal group gets exactly 0 (the mean of equal floats can differ in the last bit)
        return torch.where(zero_variance_groups(rewards)[:, None], torch.zeros_like(adv), adv)
    pool = _pool(rewards, baseline, history)
    if pool.max() == pool.min():
        return torch.zeros_like(rewards)
    return rewards - pool.mean()


def completion_mask(lengths: Tensor, max_len: int) -> Tensor:
    """lengths (N,) -> (N, max_len) bool, True on the first lengths[i] positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def token_advantages(seq_adv: Tensor, lengths: Tensor, max_len: int, credit: str, gamma: float = 1.0) -> Tensor:
    """Spread each sequence's advantage over its tokens.  seq_adv (N,), lengths (N,) -> (N, max_len).

    uniform                 A_i                                    (DeepSeekMath, TRL, verl)
    mean                    A_i / T_i                              (article section 3)
    discounted              gamma^(T_i-t) A_i / sum_k gamma^(T_i-k)  (article implementation, worked example)
    discounted_over_length  gamma^(T_i-t) A_i / T_i                (article section 3, printed variant)
    """
    mask = completion_mask(lengths, max_len)                          # (N, T)
    seq_adv = seq_adv.to(torch.float64 if seq_adv.dtype == torch.float64 else torch.float32)
    T_i = lengths.to(seq_adv.dtype)[:, None]                          # (N, 1)
    A = seq_adv[:, None]                                              # (N, 1)
    if credit == "uniform":
        out = A.expand(-1, max_len)
    elif credit == "mean":
        out = (A / T_i).expand(-1, max_len)
    elif credit in ("discounted", "discounted_over_length"):
        t = torch.arange(1, max_len + 1, device=lengths.device, dtype=seq_adv.dtype)[None, :]
        weights = torch.where(mask, torch.as_tensor(gamma, dtype=seq_adv.dtype) ** (T_i - t), 0.0)  # (N, T)
        denom = weights.sum(1, keepdim=True) if credit == "discounted" else T_i
        out = A * weights / denom
    else:
        raise ValueError(f"unknown token credit {credit!r}")
    return torch.where(mask, out, torch.zeros_like(out))


def normalize_tokens(adv: Tensor, mask: Tensor) -> Tensor:
    """(adv - mean) / (std + 1e-8) over the valid tokens of the whole batch; 0 elsewhere."""
    valid = adv[mask]
    if valid.numel() == 0 or valid.max() == valid.min():
        return torch.zeros_like(adv)
    mean, std = valid.mean(), valid.std(unbiased=False)
    return torch.where(mask, (adv - mean) / (std + EPS), torch.zeros_like(adv))


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong penalty per sequence: 0 up to max_len - buffer, then a linear ramp
    down to -factor at max_len (and below it for longer sequences)."""
    free = max_len - buffer
    ramp = (free - lengths.to(torch.float32)) / buffer * factor
    return torch.where(lengths <= free, torch.zeros_like(ramp), ramp.clamp(min=-factor))


def turn_advantages(turn_rewards: Tensor) -> Tensor:
    """Per-turn credit of multi-turn episodes (MT-GRPO: Zeng et al. 2025, arXiv 2505.11821, its
    turn-level advantage generalised to any number of turns): turn k's own rewards z-scored over
    the episodes of the group that reached turn k and were rewarded there,
        A^turn_{i,k} = (r_{i,k} - mean_j r_{j,k}) / (std_j r_{j,k} + 1e-8),
    exactly 0 where the group's rewards at turn k are all equal (one episode alone, too) and where
    episode i has no reward at turn k. turn_rewards (B, G, K), NaN where none -> (B, G, K)."""
    given = ~torch.isnan(turn_rewards)
    r = torch.where(given, turn_rewards, torch.zeros_like(turn_rewards)).double()
    n = given.sum(1, keepdim=True).double()
    mean = r.sum(1, keepdim=True) / n.clamp(min=1)
    var = (torch.where(given, r - mean, torch.zeros_like(r)) ** 2).sum(1, keepdim=True) / n.clamp(min=1)
    big, small = torch.finfo(r.dtype).max, torch.finfo(r.dtype).min
    equal = torch.where(given, r, torch.full_like(r, small)).amax(1, keepdim=True) == \
        torch.where(given, r, torch.full_like(r, big)).amin(1, keepdim=True)
    z = (r - mean) / (var.sqrt() + EPS)
    return torch.where(given & ~equal, z, torch.zeros_like(z)).to(turn_rewards.dtype)


def turn_token_advantages(turn_adv: Tensor, turns: Tensor) -> Tensor:
    """Each token its turn's advantage: turn_adv (N, K), turns (N, L) the model turn of each
    token (1..K; 0 on the environment's tokens and padding) -> (N, L), 0 where turns is 0."""
    if turn_adv.shape[1] == 0:
        return torch.zeros(turns.shape, dtype=turn_adv.dtype)
    at = (turns.long() - 1).clamp(min=0, max=turn_adv.shape[1] - 1)
    return torch.where(turns > 0, torch.gather(turn_adv, 1, at), torch.zeros((), dtype=turn_adv.dtype))


@dataclass
class Advantages:
    scaled_rewards: Tensor   # (B, G)
    sequence: Tensor         # (B, G)   A_i
    token: Tensor            # (N, T)   A~ before token normalisation
    normalized: Tensor       # (N, T)   A^ as used by the loss
    mask: Tensor             # (N, T)   valid completion tokens

    def rows(self, first: int, count: int, G: int, width: int) -> "Advantages":
        """Groups first .. first+count-1 (their count*G sequences), token columns cut to `width`
        (a slice of a batch whose other rows may be longer; the columns cut hold no valid token)."""
        s = slice(first * G, (first + count) * G)
        g = slice(first, first + count)
        return Advantages(self.scaled_rewards[g], self.sequence[g], self.token[s, :width],
                          self.normalized[s, :width], self.mask[s, :width])


def compute_advantages(rewards: Tensor, lengths: Tensor, max_len: int, *, reward_scaling: str, baseline: str,
                       token_credit: str, gamma: float, token_norm: bool,
                       history: list[Tensor] | None = None) -> Advantages:
    """The whole pipeline. rewards (B, G), lengths (B, G) or (N,) -> Advantages."""
    B, G = rewards.shape
    lengths = lengths.reshape(B * G)
    scaled = scale_rewards(rewards, reward_scaling)
    seq = sequence_advantages(scaled, baseline, history)
    tok = token_advantages(seq.reshape(B * G), lengths, max_len, token_credit, gamma)
    mask = completion_mask(lengths, max_len)
    norm = normalize_tokens(tok, mask) if token_norm else tok
    return Advantages(scaled, seq, tok, norm, mask)


# ---------------------------------------------------------------------- the estimator registry
# An advantage estimator turns a batch's rewards into the loss's per-token advantages:
#   estimator(rewards (B, G), lengths (N,), max_len, settings, history, components) -> Advantages
# `settings` is any object with the fields the estimator reads (a TrainConfig); `history` holds
# earlier batches' scaled rewards (the window baseline); `components` is {reward function name:
# (its scores (B, G), its weight)}, the parts of `rewards` (GDPO reads them). Adding one: a
# function registered here, its name in the `advantage_estimator` literal of grpo/config/fields.py, and
# its tests.
ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
register_estimator = ADVANTAGE_ESTIMATORS.register


@register_estimator("grpo")
def grpo_estimator(rewards: Tensor, lengths: Tensor, max_len: int, settings, history=None, components=None
                   ) -> Advantages:
    """The pipeline of this module's docstring, each stage a setting of `settings`."""
    return compute_advantages(rewards, lengths, max_len, reward_scaling=settings.reward_scaling,
                              baseline=settings.baseline, token_credit=settings.token_credit, gamma=settings.gamma,
                              token_norm=settings.token_norm, history=history)


def _uniform(seq: Tensor, rewards: Tensor, lengths: Tensor, max_len: int, whiten: bool) -> Advantages:
    """Advantages with the sequence advantage `seq` (B, G) on each of its tokens, whitened over the
    batch's valid tokens when `whiten`."""
    B, G = seq.shape
    lengths = lengths.reshape(B * G)
    tok = token_advantages(seq.reshape(B * G), lengths, max_len, "uniform")
    mask = completion_mask(lengths, max_len)
    return Advantages(rewards, seq, tok, normalize_tokens(tok, mask) if whiten else tok, mask)


@register_estimator("reinforce_pp")
def reinforce_pp_estimator(rewards: Tensor, lengths: Tensor, max_len: int, settings, history=None,
                           components=None) -> Advantages:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262), outcome rewards: each token's return is its
    sequence's reward (gamma 1), whitened over all valid tokens of the batch,
        A_t = (r_i - mean_tokens) / (std_tokens + 1e-8),
    no per-prompt baseline. (The paper puts the KL penalty into the token rewards; here it stays in
    the loss, weighted by `beta`.) reward_scaling, baseline, token_credit and token_norm are not read."""
    return _uniform(rewards, rewards, lengths, max_len, whiten=True)


@register_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline_estimator(rewards: Tensor, lengths: Tensor, max_len: int, settings, history=None,
                                    components=None) -> Advantages:
    """REINFORCE++-baseline (the same paper, for groups of samples per prompt): the group mean
    subtracted first, then whitened over the batch's valid tokens,
        A_t = w(r_i - mean_group),  w(.) = (. - mean_tokens) / (std_tokens + 1e-8)."""
    return _uniform(sequence_advantages(rewards, "group"), rewards, lengths, max_len, whiten=True)


@register_estimator("gdpo")
def gdpo_estimator(rewards: Tensor, lengths: Tensor, max_len: int, settings, history=None,
                   components=None) -> Advantages:
    """GDPO (Liu et al. 2026, "Group reward-Decoupled Normalization Policy Optimization", arXiv
    2601.05242): each reward function z-scored within the group on its own, then the weighted sum,
    then z-scored over the batch,
        A_i = z_batch( sum_k w_k z_group(r_k)_i ),
    so that functions of different scales and a group's particular mix of them do not collapse into
    the same advantage as z_group(sum_k w_k r_k) does. Every token gets A_i. Without `components`
    (a single reward), it is the group z-score of `rewards`, batch-normalised."""
    parts = components or {"reward": (rewards, 1.0)}
    total = sum(weight * _zscore(scores.to(rewards.dtype), dim=1) for scores, weight in parts.values())
    return _uniform(_zscore(total, dim=None), rewards, lengths, max_len, whiten=False)


def estimator(name: str):
    """The registered estimator `name`."""
    return ADVANTAGE_ESTIMATORS[name]
