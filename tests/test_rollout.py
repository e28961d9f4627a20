"""Sampling and per-token log-probs on a tiny random Llama.

The tiny model's vocabulary has 17 tokens, so a random model samples EOS now and then: enough
rows give both sequences that stop early and sequences cut at the length limit. The tokenizer's
EOS doubles as padding (as in the demo), which is the case where a mask computed from
`ids != pad` would wrongly drop the EOS token.
"""

from __future__ import annotations

import pytest
import torch

from grpo.data.prompts import encode_prompts, positions
from grpo.models.loading import load_model
from grpo.models.logprobs import token_stats
from grpo.models.reference import Reference
from grpo.rollout import Rollout, decode, generate


def frozen_copy(model) -> Reference:
    return Reference.frozen_copy(model)

PROMPTS = ["1+2=", "33+44=", "5+67=", "98+9="]          # different lengths: left padding is exercised
MAX_NEW = 8


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    assert tok.eos_token_id == tok.pad_token_id == 0
    return model, tok


def rollout(model, tok, *, repeats=8, seed=0, eos_ids=None, pad_id=None, max_new_tokens=MAX_NEW, **kw) -> Rollout:
    ids, mask = encode_prompts(tok, PROMPTS, "cpu")
    ids, mask = ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)      # (N, P)
    gen = None if kw.get("greedy") else torch.Generator().manual_seed(seed)
    return generate(model, ids, mask, max_new_tokens=max_new_tokens,
                    eos_ids=[tok.eos_token_id] if eos_ids is None else eos_ids,
                    pad_id=tok.pad_token_id if pad_id is None else pad_id, generator=gen, **kw)


def first_hit(row: list[int], eos: set[int]) -> int | None:
    return next((t for t, x in enumerate(row) if x in eos), None)


def check_masks(roll: Rollout, eos: set[int], pad: int) -> tuple[int, int]:
    """Assert the mask/length/truncation contract row by row; return (#stopped early, #truncated)."""
    early = cut = 0
    N, L = roll.completion_ids.shape
    assert L <= MAX_NEW
    assert roll.completion_mask.dtype == torch.bool and roll.logprobs.shape == (N, L)
    for ids, m, n, trunc, lp in zip(roll.completion_ids.tolist(), roll.completion_mask.tolist(),
                                    roll.lengths.tolist(), roll.truncated.tolist(), roll.logprobs):
        k = first_hit(ids, eos)
        if k is None:                                   # no EOS: every column valid, cut at the limit
            assert trunc and L == MAX_NEW and all(m) and n == L
            cut += 1
        else:                                           # valid up to and including the first EOS
            assert not trunc
            assert m == [True] * (k + 1) + [False] * (L - k - 1)
            assert n == k + 1
            assert ids[k + 1:] == [pad] * (L - k - 1)   # padding after EOS
            assert torch.all(lp[k + 1:] == 0) and torch.all(lp[:k + 1] < 0)
            early += k + 1 < L
    return early, cut


def test_mask_lengths_and_truncation_when_eos_is_pad(model_tok):
    model, tok = model_tok
    roll = rollout(model, tok)
    early, cut = check_masks(roll, {0}, pad=0)
    assert early > 0 and cut > 0, "the sample should hold both early stops and truncations"
    assert torch.equal(roll.lengths, roll.completion_mask.sum(1))
    # decoding keeps one character per valid character token and drops EOS, <unk> and padding
    for text, ids, n in zip(decode(tok, roll), roll.completion_ids.tolist(), roll.lengths.tolist()):
        assert "<eos>" not in text
        assert len(text) == sum(i >= 2 for i in ids[:n])


def test_mask_with_eos_distinct_from_pad(model_tok):
    model, tok = model_tok
    plus = tok.convert_tokens_to_ids("+")
    roll = rollout(model, tok, eos_ids=[plus], pad_id=0)
    early, cut = check_masks(roll, {plus}, pad=0)
    assert early > 0 and cut > 0


def test_truncated_when_eos_is_never_sampled(model_tok):
    model, tok = model_tok
    roll = rollout(model, tok, min_new_tokens=MAX_NEW)
    assert roll.truncated.all() and roll.completion_mask.all()
    assert torch.equal(roll.lengths, torch.full_like(roll.lengths, MAX_NEW))
    assert not (roll.completion_ids == 0).any()


def test_min_new_tokens_forbids_early_eos(model_tok):
    model, tok = model_tok
    free = rollout(model, tok, repeats=16, seed=1)
    k = 3
    assert (free.completion_ids[:, :k] == 0).any(), "without the ban some row stops within k tokens"
    banned = rollout(model, tok, repeats=16, seed=1, min_new_tokens=k)
    assert not (banned.completion_ids[:, :k] == 0).any()
    assert (banned.lengths >= k).all()
    assert (~banned.truncated).any(), "EOS is still allowed after min_new_tokens"
    check_masks(banned, {0}, pad=0)


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=5, top_p=0.9),
                                dict(temperature=1.3, min_new_tokens=2)])
def test_recorded_logprobs_equal_token_stats(model_tok, kw):
    model, tok = model_tok
    roll = rollout(model, tok, **kw)
    with torch.no_grad():
        st = token_stats(model, roll, temperature=kw["temperature"], chunk=5)
    assert st.full_kl is None
    torch.testing.assert_close(st.logp, roll.logprobs, atol=1e-5, rtol=0)
    assert torch.all(st.logp[~roll.completion_mask] == 0)
    assert torch.all(st.entropy[roll.completion_mask] > 0)


def test_greedy_is_deterministic_and_equals_argmax(model_tok):
    model, tok = model_tok
    a = rollout(model, tok, repeats=1, greedy=True)
    b = rollout(model, tok, repeats=1, greedy=True)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
    # each greedy token is the argmax of a plain forward over prompt + completion so far
    with torch.no_grad():
        logits = plain_logits(model, a, temperature=1.0)                   # (N, L, V)
    am = logits.argmax(-1)
    assert torch.equal(am[a.completion_mask], a.completion_ids[a.completion_mask])


def test_same_generator_seed_same_samples(model_tok):
    model, tok = model_tok
    a, b = rollout(model, tok, seed=7), rollout(model, tok, seed=7)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.logprobs, b.logprobs)
    c = rollout(model, tok, seed=8)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_top_k_1_equals_greedy(model_tok):
    model, tok = model_tok
    greedy = rollout(model, tok, repeats=1, greedy=True)
    for seed in (0, 1):
        top1 = rollout(model, tok, repeats=1, seed=seed, top_k=1)
        assert torch.equal(top1.completion_ids, greedy.completion_ids)
        torch.testing.assert_close(top1.logprobs, greedy.logprobs)


# ------------------------------------------------------------------ token_stats vs plain path
def plain_logits(model, roll: Rollout, temperature: float) -> torch.Tensor:
    """Obviously correct: one ordinary forward, the full (N, L, V) logits at completion positions."""
    ids = torch.cat([roll.prompt_ids, roll.completion_ids], 1)
    attn = torch.cat([roll.prompt_mask, roll.completion_mask.long()], 1)
    P, L = roll.prompt_ids.shape[1], roll.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits
    return logits[:, P - 1:P + L - 1].float() / temperature                 # (N, L, V)


def plain_logp(model, roll, temperature):
    logp = torch.log_softmax(plain_logits(model, roll, temperature), -1)
    tok_logp = logp.gather(-1, roll.completion_ids[..., None]).squeeze(-1)  # (N, L)
    return tok_logp * roll.completion_mask


def grads_of(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def test_chunked_token_stats_equal_plain_path_values_and_gradients(model_tok):
    model, tok = model_tok
    T = 0.8
    roll = rollout(model, tok, repeats=2, temperature=T)
    w = torch.randn(roll.completion_ids.shape, generator=torch.Generator().manual_seed(0))   # (N, L)
    with torch.no_grad():
        ref_logp = plain_logp(model, roll, T)
    ref_grads = grads_of(model, lambda: (plain_logp(model, roll, T) * w).sum())
    assert all(g.abs().sum() > 0 for g in ref_grads.values())
    for chunk in (1, 3, 1024):
        st = token_stats(model, roll, temperature=T, chunk=chunk)
        torch.testing.assert_close(st.logp.detach(), ref_logp, atol=1e-5, rtol=0)
        grads = grads_of(model, lambda: (token_stats(model, roll, temperature=T, chunk=chunk).logp * w).sum())
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-4, msg=f"chunk {chunk}: {name}")


def test_full_kl_equals_explicit_vocabulary_sum(model_tok):
    model, tok = model_tok
    T = 0.9
    roll = rollout(model, tok, repeats=2, temperature=T)
    ref = frozen_copy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in ref.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        logp = torch.log_softmax(plain_logits(model, roll, T), -1)          # (N, L, V)
        ref_logp = torch.log_softmax(plain_logits(ref.model, roll, T), -1)
        explicit = (logp.exp() * (logp - ref_logp)).sum(-1) * roll.completion_mask
        for chunk in (1, 4, 1024):
            st = token_stats(model, roll, temperature=T, chunk=chunk, ref=ref)
            torch.testing.assert_close(st.full_kl, explicit, atol=1e-5, rtol=1e-4)
        assert (st.full_kl[roll.completion_mask] > 0).all()

        same = token_stats(model, roll, temperature=T, chunk=3, ref=frozen_copy(model))
        torch.testing.assert_close(same.full_kl, torch.zeros_like(same.full_kl), atol=1e-6, rtol=0)


def test_full_kl_does_not_touch_the_reference_gradients(model_tok):
    model, tok = model_tok
    roll = rollout(model, tok, repeats=1)
    ref = frozen_copy(model)
    st = token_stats(model, roll, temperature=1.0, chunk=4, ref=ref)
    (st.logp.sum() + st.full_kl.sum()).backward()
    assert all(p.grad is None for p in ref.model.parameters())
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("engine", ["hf", "lean"])
def test_shared_prefill_equals_one_prefill_per_sample(tiny_model_dir, engine):
    """Prefilling each prompt once and copying its KV cache to the G samples gives the samples
    (and log-probs) of prefilling every repeated row, with either engine."""
    from grpo.fast.lean_decode import LeanEngine
    from grpo.rollout import HFEngine
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    ids, mask = encode_prompts(tok, ["12+3=", "7+80=", "5+5="], "cpu")
    kw = dict(max_new_tokens=6, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
              engine=HFEngine() if engine == "hf" else LeanEngine())
    shared = generate(model, ids, mask, num_samples=4, generator=torch.Generator().manual_seed(7), **kw)
    plain = generate(model, ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0),
                     generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(shared.prompt_ids, plain.prompt_ids)
    assert torch.equal(shared.completion_ids, plain.completion_ids)
    assert torch.equal(shared.completion_mask, plain.completion_mask)
    assert torch.allclose(shared.logprobs, plain.logprobs, atol=1e-5)


@pytest.mark.slow
def test_inverse_cdf_sampler_draws_each_index_with_its_probability():
    from grpo.rollout.sampling import sample
    w = torch.tensor([[0.0, 1.0, 3.0, 0.0, 6.0], [5.0, 0.0, 0.0, 0.0, 5.0]])
    n = 40000
    draws = sample(w.repeat_interleave(n, 0), torch.Generator().manual_seed(0)).view(2, n)
    freq = torch.stack([torch.bincount(r, minlength=5) for r in draws]).float() / n
    expected = w / w.sum(-1, keepdim=True)
    assert torch.all(freq[expected == 0] == 0)                           # zero weight: never drawn
    assert torch.allclose(freq, expected, atol=0.01)                     # ~4 standard errors at n=40k


def test_reserved_cache_gives_the_dynamic_cache_results(model_tok):
    """Decoding with the reserved-capacity cache equals decoding with transformers' growing one,
    including a row that runs past the reservation (falls back to growing)."""
    from transformers.cache_utils import DynamicCache
    from grpo.compat import ReservedLayer, reserve
    model, tok = model_tok
    ids, mask = encode_prompts(tok, PROMPTS, "cpu")
    outs = []
    for extra in (None, 2):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
        cache, m, pos, steps = out.cache, mask, positions(mask)[:, -1:] + 1, []
        if extra is not None:
            reserve(cache, extra)
            assert all(type(layer) is ReservedLayer for layer in cache.layers)
        tok_ids = out.logits[:, -1].argmax(-1)
        for _ in range(4):                                   # 4 > 2: the reservation runs out
            m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
            o = model(input_ids=tok_ids[:, None], attention_mask=m, position_ids=pos, cache=cache, use_cache=True)
            cache, pos, tok_ids = o.cache, pos + 1, o.logits[:, -1].argmax(-1)
            steps.append(o.logits[:, -1])
        outs.append(torch.stack(steps))
        assert isinstance(cache, DynamicCache)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_shared_prompt_forward_equals_plain_path_on_any_row_selection(tiny_model_dir, checkpointed):
    """Rows are grouped by prompt inside token_stats (one prompt forward per distinct prompt); a
    shuffled subset mixing groups, with and without checkpointed layers, gives the plain
    per-row forward's log-probs and gradients."""
    from grpo.models.logprobs import allow_prefix_under_checkpointing, can_share_prefix
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    roll = rollout(model, tok, repeats=3).select(torch.tensor([5, 0, 11, 3, 4, 9, 1]))
    model.train()
    if checkpointed:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        allow_prefix_under_checkpointing(model)
    with torch.enable_grad():
        assert can_share_prefix(model, model.get_decoder())
    w = torch.randn(roll.completion_ids.shape, generator=torch.Generator().manual_seed(1))
    ref_grads = grads_of(model, lambda: (plain_logp(model, roll, 1.0) * w).sum())
    st = token_stats(model, roll, temperature=1.0, chunk=5)
    torch.testing.assert_close(st.logp.detach(), plain_logp(model, roll, 1.0).detach(), atol=1e-5, rtol=0)
    grads = grads_of(model, lambda: (token_stats(model, roll, temperature=1.0, chunk=5).logp * w).sum())
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointed", [False, True])
@pytest.mark.parametrize("backward", [False, True])
def test_shared_prompt_forward_is_freed_with_or_without_a_backward(tiny_model_dir, backward, checkpointed,
                                                                   monkeypatch):
    """The prompt forward's outputs (and the graph they hold) are freed once the caller drops the
    result, whether or not a backward ran through it (a forward never backwarded once kept its
    graph for the rest of the run: a cycle through the stand-ins' hooks)."""
    import gc
    import weakref
    from grpo.models import logprobs
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    roll = rollout(model, tok, repeats=2)
    model.train()
    if checkpointed:
        from grpo.models.logprobs import allow_prefix_under_checkpointing
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        allow_prefix_under_checkpointing(model)
    seen = []
    real = logprobs._deferred_backward

    def spy(outputs):
        stand_ins = real(outputs)
        seen.extend(weakref.ref(t) for t in outputs + stand_ins)
        return stand_ins

    monkeypatch.setattr(logprobs, "_deferred_backward", spy)
    with torch.enable_grad():
        st = token_stats(model, roll, temperature=1.0, chunk=5)
        if backward:
            st.logp.sum().backward()
    assert seen and all(r() is not None for r in seen)
    del st
    gc.collect()
    alive = sum(r() is not None for r in seen)
    assert alive == 0, f"{alive} of the prompt forward's {len(seen)} tensors still alive"


@pytest.mark.slow
def test_two_level_sampler_handles_blocks_padding_and_empty_blocks():
    """Vocabulary not a multiple of the block, mass in a single late entry, whole blocks of zeros:
    the draw lands only on positive entries, with the right frequencies."""
    from grpo.rollout.sampling import sample
    V = 1000
    w = torch.zeros(3, V)
    w[0, 999] = 1.0                                     # the very last entry, in the padded block
    w[1, [3, 600, 998]] = torch.tensor([1.0, 2.0, 1.0])  # spread over blocks, most blocks empty
    w[2] = torch.rand(V, generator=torch.Generator().manual_seed(0))
    n = 20000
    for block in (7, 64, 512, 4096):
        draws = sample(w.repeat_interleave(n, 0), torch.Generator().manual_seed(block), block=block).view(3, n)
        assert torch.all(draws[0] == 999)
        freq = torch.bincount(draws[1], minlength=V).float() / n
        assert set(torch.nonzero(freq).flatten().tolist()) == {3, 600, 998}
        assert torch.allclose(freq[[3, 600, 998]], torch.tensor([0.25, 0.5, 0.25]), atol=0.015)
        assert torch.all(w[2, draws[2]] > 0)


def test_logits_holding_nan_draw_a_token_of_the_vocabulary_with_a_nan_log_prob():
    """NaN logits (a broken model) never index past the vocabulary: the token is a valid index and
    its log-prob NaN, which the step reports (grpo/train/rollouts.py:check_sampled)."""
    from grpo.rollout.base import SamplingSettings
    from grpo.rollout.sampling import draw
    logits = torch.randn(4, 17)
    logits[1:3] = float("nan")
    u = torch.rand(4, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = dict(max_new_tokens=4, eos_ids=(0,), pad_id=0)
    for s in (SamplingSettings(**base), SamplingSettings(**base, top_k=5), SamplingSettings(**base, greedy=True)):
        tok, logp = draw(logits, u, s, torch.tensor([0]))
        assert ((tok >= 0) & (tok < 17)).all(), s
        assert torch.isnan(logp[1:3]).all() and torch.isfinite(logp[[0, 3]]).all(), s


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_head_log_prob_and_entropy_equal_autograds_path(bias, temperature, keep):
    """fast.fused_head.HeadLogProb against log_softmax + gather (and the entropy's definition):
    values, and gradients into the hidden states, the weight and the bias."""
    from grpo.fast.fused_head import HeadLogProb as _HeadLogProb
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 30, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(30, 8, generator=g))
        if bias:
            head.bias.copy_(torch.randn(30, generator=g))
    h = torch.randn(11, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 30, (11,), generator=g)
    w = torch.randn(11, generator=g)

    logp_all = torch.log_softmax(head(h) / temperature, -1)
    want = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    want_ent = -(logp_all.exp() * logp_all).sum(-1)
    want_grads = torch.autograd.grad((want * w).sum(), [h, *head.parameters()])

    logp, ent = _HeadLogProb.apply(h, head.weight, head.bias, targets, 1.0 / temperature, keep)
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent.detach(), atol=1e-5, rtol=1e-5)
    assert not ent.requires_grad
    grads = torch.autograd.grad((logp * w).sum(), [h, *head.parameters()])
    for got, exp in zip(grads, want_grads):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-4)

    head.requires_grad_(False)                           # a frozen head (LoRA): only the hidden states' gradient
    logp, _ = _HeadLogProb.apply(h, head.weight, head.bias, targets, 1.0 / temperature, keep)
    (dh,) = torch.autograd.grad((logp * w).sum(), [h])
    torch.testing.assert_close(dh, want_grads[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("keep_bytes", [0, 1000, 10 ** 6])
def test_token_stats_fused_head_equals_the_checkpointed_path(model_tok, monkeypatch, keep_bytes):
    """The fused head with the softmax recomputed in backward (0), kept for the first chunks only
    (1000 bytes: two chunks of 5 tokens x 17 logits x 4 bytes) or kept for every chunk."""
    from grpo.fast import fused_head
    model, tok = model_tok
    roll = rollout(model, tok, repeats=2, temperature=0.8)
    w = torch.randn(roll.completion_ids.shape, generator=torch.Generator().manual_seed(1))
    calls = []
    apply = fused_head.HeadLogProb.apply
    monkeypatch.setattr(fused_head.HeadLogProb, "apply", lambda *a: calls.append(a[-1]) or apply(*a))
    head = fused_head.FusedHead(keep_bytes)
    with torch.no_grad():
        fused = token_stats(model, roll, temperature=0.8, chunk=5, head=head)
    assert calls and not any(calls)                                        # nothing kept without autograd
    calls.clear()
    fused_grads = grads_of(model, lambda: (token_stats(model, roll, temperature=0.8, chunk=5,
                                                       head=head).logp * w).sum())
    assert len(calls) > 2
    kept = {0: 0, 1000: 2, 10 ** 6: len(calls)}[keep_bytes]
    assert calls == [True] * kept + [False] * (len(calls) - kept)
    n = len(calls)
    plain = token_stats(model, roll, temperature=0.8, chunk=5)
    plain_grads = grads_of(model, lambda: (token_stats(model, roll, temperature=0.8, chunk=5).logp * w).sum())
    assert len(calls) == n
    torch.testing.assert_close(fused.logp, plain.logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.entropy, plain.entropy, atol=1e-5, rtol=1e-5)
    for name, g in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("engine", ["hf", "lean"])
@pytest.mark.parametrize("draws", ["per_prompt", "one", "top_p"])     # (the tiny model's greedy rows end together)
def test_shedding_finished_rows_gives_the_same_samples(tiny_model_dir, monkeypatch, engine, draws):
    """The decode batch drops rows that have finished (rollout/hf_loop.COMPACT_AT): the tokens,
    log-probs and entropies are those of decoding every row to the end, and rows were dropped."""
    from grpo.fast import lean_decode
    from grpo.rollout import HFEngine, hf_loop
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    ids, mask = encode_prompts(tok, ["12+3=", "7+80=", "5+5=", "1+1="], "cpu")
    # end at EOS, '1' or '=': the rows of a batch finish at many different steps
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("=")]
    kw = dict(max_new_tokens=12, eos_ids=eos, pad_id=tok.pad_token_id, num_samples=6, record_entropy=True,
              top_p=0.9 if draws == "top_p" else 1.0)
    sheds = []
    for cls in (hf_loop.ForwardStepper, lean_decode.LeanDecoder):
        original = cls.keep
        monkeypatch.setattr(cls, "keep", lambda self, rows, _o=original: (sheds.append(rows.numel()), _o(self, rows)))

    monkeypatch.setattr(hf_loop, "SHED_AFTER", 0)

    def run(share):
        monkeypatch.setattr(hf_loop, "COMPACT_AT", share)
        gen = ([torch.Generator().manual_seed(3 + i) for i in range(4)] if draws == "per_prompt"
               else torch.Generator().manual_seed(3))
        return generate(model, ids, mask, engine=HFEngine() if engine == "hf" else lean_decode.LeanEngine(),
                        generator=gen, **kw)

    whole = run(0.0)                     # never sheds: some row is always running
    assert not sheds
    for share in (0.75, 1.0):
        shed = run(share)
        assert torch.equal(shed.completion_ids, whole.completion_ids), share
        assert torch.equal(shed.completion_mask, whole.completion_mask)
        torch.testing.assert_close(shed.logprobs, whole.logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(shed.entropy, whole.entropy, atol=1e-4, rtol=0)
    assert sheds and len(set(whole.lengths.tolist())) > 3, "the test needs rows that finish at different steps"


def test_length_buckets_by_hand():
    from grpo.models.logprobs import length_buckets
    lengths = torch.tensor([3, 10, 9, 1, 10, 4])
    # sorted longest first: rows 1, 4 (10), 2 (9), 5 (4), 0 (3), 3 (1)
    # slack 1.25: [1, 4, 2, 5] holds 4 x 10 = 40 <= 1.25 x 33 = 41.25; adding row 0 gives 5 x 10 = 50 >
    #   1.25 x 36 = 45: a new bucket [0]; adding row 3 to it gives 2 x 3 = 6 > 1.25 x 4 = 5: [3] alone
    assert [b.tolist() for b in length_buckets(lengths, 1.25)] == [[1, 4, 2, 5], [0], [3]]
    assert [b.tolist() for b in length_buckets(lengths, 100.0)] == [[1, 4, 2, 5, 0, 3]]
    assert [b.tolist() for b in length_buckets(lengths, 1.0)] == [[1, 4], [2], [5], [0], [3]]


@pytest.mark.parametrize("checkpointed", [False, True])
def test_completion_forward_in_length_buckets_equals_one_padded_forward(tiny_model_dir, monkeypatch, checkpointed):
    """Rows cut into buckets of similar length (each padded only to its own longest) give the
    log-probs and gradients of one forward over every row padded to the longest."""
    from grpo.models import logprobs
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    roll = rollout(model, tok, repeats=3, eos_ids=[tok.eos_token_id, tok.convert_tokens_to_ids("1")])
    assert len(set(roll.lengths.tolist())) >= 3, "the test needs completions of several lengths"
    model.train()
    if checkpointed:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        logprobs.allow_prefix_under_checkpointing(model)
    w = torch.randn(roll.completion_ids.shape, generator=torch.Generator().manual_seed(1))

    def stats(slack):
        monkeypatch.setattr(logprobs, "BUCKET_SLACK", slack)
        assert len(logprobs.length_buckets(roll.completion_mask.sum(1))) == (1 if slack > 10 else
                                                                             len(set(roll.lengths.tolist())))
        logp = token_stats(model, roll, temperature=1.0, chunk=5).logp
        return logp.detach(), grads_of(model, lambda: (token_stats(model, roll, temperature=1.0, chunk=5).logp * w).sum())

    one, one_grads = stats(1e9)
    many, many_grads = stats(1.0)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=0)
    for name, g in one_grads.items():
        torch.testing.assert_close(many_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)
