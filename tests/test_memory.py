"""The memory and decoding levers equal the plain paths: few-row matmuls in decoding, the reference
kept in a file-backed mapping, and heap reuse inside a training phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from grpo import rollout as rollout_mod
from grpo.policy import FileBackedWeights, frozen_copy, hf_model, load_model, release_weights, token_stats
from grpo.rollout import decoding_linears, encode_prompts, few_rows_linear, generate
from grpo.train import train

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux memory accounting")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------- few-row matmuls
@pytest.mark.parametrize("shape", [(1, 32), (4, 1, 32), (16, 32), (2, 3, 32)])
@pytest.mark.parametrize("bias", [False, True])
def test_few_rows_linear_equals_linear(shape, bias):
    torch.manual_seed(0)
    w, b = torch.randn(48, 32), (torch.randn(48) if bias else None)
    x = torch.randn(*shape)
    out = few_rows_linear(x, w, b)
    assert out.shape == (*shape[:-1], 48)
    rows = x.numel() // 32
    if rows > 1:
        assert out.stride(-1) >= rows         # computed as (W x^T)^T (columns maybe padded), not x W^T
    torch.testing.assert_close(out, torch.nn.functional.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_many_rows_take_the_plain_linear():
    x, w = torch.randn(rollout_mod.FEW_ROWS + 1, 8), torch.randn(5, 8)
    assert torch.equal(few_rows_linear(x, w, None), torch.nn.functional.linear(x, w))


def test_decoding_linears_patches_plain_linears_and_restores_them():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(4, 8)
    plain = net(x)
    with decoding_linears(net):
        assert all("forward" in vars(m) for m in net if isinstance(m, torch.nn.Linear))
        torch.testing.assert_close(net(x), plain, atol=1e-6, rtol=1e-6)
    assert not any("forward" in vars(m) for m in net)


def test_decoding_with_few_row_matmuls_equals_plain_decoding(tiny_model_dir, monkeypatch):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    ids, mask = encode_prompts(tok, ["1+2=", "33+44=", "5+67="], "cpu")
    kw = dict(max_new_tokens=8, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, greedy=True, num_samples=2)
    fast = generate(model, ids, mask, **kw)
    monkeypatch.setattr(rollout_mod, "FEW_ROWS", 0)              # every matmul as x W^T
    plain = generate(model, ids, mask, **kw)
    assert torch.equal(fast.completion_ids, plain.completion_ids)
    torch.testing.assert_close(fast.logprobs, plain.logprobs, atol=1e-5, rtol=0)


# ------------------------------------------------------------- reference in a mapped file
def test_file_backed_reference_equals_the_in_memory_copy_and_leaves_no_file(tiny_model_dir, tmp_path):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    ids, mask = encode_prompts(tok, ["1+2=", "33+44="], "cpu")
    roll = generate(model, ids, mask, max_new_tokens=6, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
                    generator=torch.Generator().manual_seed(0), num_samples=3)
    in_memory, in_file = frozen_copy(model), frozen_copy(model, tmp_path)
    assert list(tmp_path.iterdir()) == []                        # unlinked once mapped
    assert isinstance(in_file.grpo_file_weights, FileBackedWeights)
    for (n, a), (_, b) in zip(in_memory.state_dict().items(), in_file.state_dict().items()):
        assert torch.equal(a, b), n
    if model.config.tie_word_embeddings:                         # still one tensor, not two
        assert hf_model(in_file).get_input_embeddings().weight is hf_model(in_file).get_output_embeddings().weight
    for _ in range(2):                                           # the second time reads the dropped pages back
        with torch.no_grad():
            a = token_stats(in_memory, roll, temperature=1.0, chunk=4).logp
            b = token_stats(in_file, roll, temperature=1.0, chunk=4).logp
        release_weights(in_file)
        assert torch.equal(a, b)


def test_a_reference_that_cannot_go_to_a_file_stays_in_memory_with_a_warning(tmp_path):
    net = torch.nn.Linear(4, 3)
    with pytest.warns(UserWarning, match="reference_in_file: cannot keep"):
        ref = frozen_copy(net, tmp_path / "no-such-folder")
    assert not hasattr(ref, "grpo_file_weights")
    assert torch.equal(ref.weight, net.weight) and not ref.weight.requires_grad
    release_weights(ref)                                         # nothing to release: no error


@linux_only
def test_releasing_a_file_backed_module_hands_its_pages_back(tmp_path):
    big = torch.nn.Linear(2048, 4096, bias=False)                  # 32 MiB of weights
    ref = frozen_copy(big, tmp_path)
    del big
    x = torch.randn(2, 2048)
    with torch.no_grad():
        ref(x)                                                   # every page read: resident
    resident = rss_bytes()
    release_weights(ref)
    assert resident - rss_bytes() > 24 * 2 ** 20
    with torch.no_grad():
        torch.testing.assert_close(ref(x), x @ ref.weight.t())  # and the weights are still there


def test_training_with_the_reference_in_a_file_equals_the_in_memory_reference(tiny_config):
    def metrics(**kw):
        cfg = tiny_config(preset="deepseekmath", eval_size=0, save_model=False, **kw)
        train(cfg, log=lambda *a: None)
        rows = [json.loads(x) for x in open(os.path.join(cfg.output_dir, "metrics.jsonl"))]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    assert metrics(reference_in_file=True) == metrics(reference_in_file=False)


# -------------------------------------------------------------------------- heap reuse
FAULT_PROBE = """
import resource, sys, torch
from grpo import sysmem
if not sysmem.return_freed_memory():
    print("skip"); sys.exit()

def faults(n=20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.ones(2 * 2 ** 20)                     # 8 MiB, written in full
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

mapped = faults()                                   # a fresh mapping each time
with sysmem.reuse_freed_memory():
    faults(10)                                      # the heap grows to fit the pattern
    reused = faults()                               # then serves every block again
print(mapped, reused)
"""


@linux_only
def test_reuse_freed_memory_serves_repeated_large_blocks_without_page_faults():
    # in a fresh process: the allocator's state is process-wide, and other tests leave theirs
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}          # 4 KiB pages, whatever the test process set
    out = subprocess.run([sys.executable, "-c", FAULT_PROBE], capture_output=True, text=True, check=True,
                         env=env).stdout
    if out.strip() == "skip":
        pytest.skip("glibc's mallopt is not available")
    mapped, reused = map(int, out.split())
    assert mapped > 20 * 1000, mapped                 # ~2048 pages of 4 KiB per block
    assert reused < mapped / 10, (mapped, reused)



TRIM_PROBE = """
import os, sys, time, torch
from grpo import sysmem
if not sysmem.return_freed_memory():
    print("skip"); sys.exit()

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def holes(trim_every):
    with sysmem.reuse_freed_memory(trim_every=trim_every):
        blocks = [torch.ones(2 * 2 ** 20) for _ in range(21)]      # 8 MiB each from the heap, written
        before = rss()
        del blocks[0:20:2]          # 80 MiB of holes, each between two live blocks (none merges)
        time.sleep(0.5)
        held = rss()
        del blocks
    return (before - held) // 2 ** 20

print(holes(None), holes(0.05))
"""


@linux_only
def test_reuse_with_trim_every_hands_free_heap_pages_back_while_inside():
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}).stdout
    if out.strip() == "skip":
        pytest.skip("glibc's mallopt is not available")
    kept_released, trimmed_released = map(int, out.split())      # MiB handed back while still inside
    assert kept_released < 20, kept_released
    assert trimmed_released > 60, trimmed_released
