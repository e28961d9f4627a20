"""The static engine on a GPU (skipped without CUDA): decoding units replayed from CUDA graphs
give what the same units give run eagerly, token for token, including across calls whose prompt
widths and row counts differ (a graph replayed with a stale length would show here), with rows
shed and LoRA merged; and the sampled tokens' log-probs stay within bf16 rounding of the
trainer's own (models.logprobs.token_stats). Run them on the GPU machine with
`python -m pytest -q tests/test_cuda_engine.py`."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from test_lean_decode import build, prompts                              # noqa: E402
from test_static_engine import assert_same, lora_model, seeds, settings   # noqa: E402

from grpo.models.logprobs import token_stats                              # noqa: E402
from grpo.rollout import HFEngine, StaticEngine                           # noqa: E402


def cuda_prompts(B: int = 3, P: int = 6):
    ids, mask = prompts(B, P)
    return ids.cuda(), mask.cuda()


def both(model, ids, mask, s, window=8, **kw):
    """(graph-replayed, eager) rollouts of the same units: the same rows (padded buckets), the same
    attention windows, so the same kernels."""
    graphed = StaticEngine(graphs=True, window=window, **kw)
    eager = StaticEngine(graphs=False, window=window, buckets=True, **kw)
    return graphed, eager, graphed.generate(model, ids, mask, s, seeds()), eager.generate(model, ids, mask, s, seeds())


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(), dict(top_p=0.8, top_k=7), dict(min_new_tokens=5)],
                         ids=["greedy", "sampled", "top_p_top_k", "min_new"])
def test_graph_replay_equals_eager_units(kw):
    model = build("qwen3").cuda()
    ids, mask = cuda_prompts()
    graphed, _, a, b = both(model, ids, mask, settings(max_new_tokens=24, **kw))
    assert_same(a, b, logp_tol=1e-5)
    assert graphed.captured, "no graph was captured"


def test_graphs_are_reused_across_calls_of_other_widths_and_stay_exact():
    model = build("llama").cuda()
    graphed, eager = StaticEngine(graphs=True, window=8), StaticEngine(graphs=False, window=8, buckets=True)
    s = settings(max_new_tokens=16)
    ids, mask = cuda_prompts(3, 9)                    # the widest first: the buffers are sized once
    assert_same(graphed.generate(model, ids, mask, s, seeds()), eager.generate(model, ids, mask, s, seeds()), 1e-5)
    state = graphed.state
    for B, P in ((3, 4), (2, 7)):                     # other widths and row counts replay old graphs too
        ids, mask = cuda_prompts(B, P)
        assert_same(graphed.generate(model, ids, mask, s, seeds(B)), eager.generate(model, ids, mask, s, seeds(B)), 1e-5)
    count = len(graphed.captured)
    ids, mask = cuda_prompts(3, 9)                    # the first call's shape again: nothing new captured
    assert_same(graphed.generate(model, ids, mask, s, seeds()), eager.generate(model, ids, mask, s, seeds()), 1e-5)
    assert graphed.state is state and len(graphed.captured) == count


def test_shedding_under_graphs_equals_eager_and_the_plain_loop():
    model = build("mistral").cuda()
    ids, mask = cuda_prompts()
    s = settings(max_new_tokens=40, eos_ids=tuple(range(3, 12)), num_samples=8)
    graphed, _, a, b = both(model, ids, mask, s, check_every=2)
    assert_same(a, b, logp_tol=1e-5)
    assert len({k[0] for k in graphed.captured}) > 1    # rows were shed into smaller buckets
    assert_same(HFEngine().generate(model, ids, mask, s, seeds()), a, logp_tol=1e-4)


def test_lora_under_graphs_follows_the_adapter_between_calls():
    peft_model = lora_model().cuda()
    net = peft_model.base_model.model
    ids, mask = cuda_prompts()
    s = settings(eos_ids=(3, 4))
    graphed, eager = StaticEngine(graphs=True, window=8), StaticEngine(graphs=False, window=8, buckets=True)
    for _ in range(2):
        assert_same(graphed.generate(net, ids, mask, s, seeds()), eager.generate(net, ids, mask, s, seeds()), 1e-5)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "lora_A" in name:
                    p.mul_(1.5)


def test_bf16_log_probs_are_within_bf16_of_the_trainers():
    model = build("llama").cuda()
    ids, mask = cuda_prompts()
    s = settings(max_new_tokens=24)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        roll = StaticEngine().generate(model, ids, mask, s, seeds())
        trainer = token_stats(model, roll, temperature=s.temperature, chunk=256).logp
    m = roll.completion_mask
    diff = (roll.logprobs - trainer.float())[m].abs()
    assert diff.mean() < 0.02 and diff.max() < 0.25, (diff.mean().item(), diff.max().item())
