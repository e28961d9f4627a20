"""The memory and decoding levers equal the plain paths: few-row matmuls in decoding, the reference
kept in a file-backed mapping, and heap reuse inside a training phase (grpo/fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from grpo.data.prompts import encode_prompts
from grpo.fast.few_rows import FewRows
from grpo.fast.file_weights import FileBackedWeights, spill_to
from grpo.models.loading import hf_model, load_model
from grpo.models.logprobs import reference_logprobs
from grpo.models.reference import Reference
from grpo.rollout import HFEngine, generate
from grpo.train import train

few_rows_linear = FewRows().linear

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
    x, w = torch.randn(FewRows().max_rows + 1, 8), torch.randn(5, 8)
    assert torch.equal(few_rows_linear(x, w, None), torch.nn.functional.linear(x, w))


def test_decoding_linears_patches_plain_linears_and_restores_them():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(4, 8)
    plain = net(x)
    with FewRows().decoding_linears(net):
        assert all("forward" in vars(m) for m in net if isinstance(m, torch.nn.Linear))
        torch.testing.assert_close(net(x), plain, atol=1e-6, rtol=1e-6)
    assert not any("forward" in vars(m) for m in net)


def test_decoding_with_few_row_matmuls_equals_plain_decoding(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    model.eval()
    ids, mask = encode_prompts(tok, ["1+2=", "33+44=", "5+67="], "cpu")
    kw = dict(max_new_tokens=8, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, greedy=True, num_samples=2)
    fast = generate(model, ids, mask, engine=HFEngine(scope=FewRows().decoding_linears), **kw)
    plain = generate(model, ids, mask, engine=HFEngine(), **kw)              # every matmul as x W^T
    assert torch.equal(fast.completion_ids, plain.completion_ids)
    torch.testing.assert_close(fast.logprobs, plain.logprobs, atol=1e-5, rtol=0)


# ------------------------------------------------------------- reference in a mapped file
def test_file_backed_reference_equals_the_in_memory_copy_and_leaves_no_file(tiny_model_dir, tmp_path):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    ids, mask = encode_prompts(tok, ["1+2=", "33+44="], "cpu")
    roll = generate(model, ids, mask, max_new_tokens=6, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
                    generator=torch.Generator().manual_seed(0), num_samples=3)
    in_memory, in_file = Reference.frozen_copy(model), Reference.frozen_copy(model, spill_to(tmp_path))
    assert list(tmp_path.iterdir()) == []                        # unlinked once mapped
    assert isinstance(in_file.spilled, FileBackedWeights) and in_memory.spilled is None
    for (n, a), (_, b) in zip(in_memory.model.state_dict().items(), in_file.model.state_dict().items()):
        assert torch.equal(a, b), n
    if model.config.tie_word_embeddings:                         # still one tensor, not two
        net = hf_model(in_file.model)
        assert net.get_input_embeddings().weight is net.get_output_embeddings().weight
    for _ in range(2):                                           # the second time reads the dropped pages back
        a = reference_logprobs(in_memory, roll, temperature=1.0, chunk=4)
        b = reference_logprobs(in_file, roll, temperature=1.0, chunk=4)
        in_file.release()
        assert torch.equal(a, b)


def test_a_reference_that_cannot_go_to_a_file_stays_in_memory_with_a_warning(tmp_path):
    net = torch.nn.Linear(4, 3)
    with pytest.warns(UserWarning, match="reference_in_file: cannot keep"):
        ref = Reference.frozen_copy(net, spill_to(tmp_path / "no-such-folder"))
    assert ref.spilled is None
    assert torch.equal(ref.model.weight, net.weight) and not ref.model.weight.requires_grad
    ref.release()                                                # nothing to release: no error


@linux_only
def test_releasing_a_file_backed_module_hands_its_pages_back(tmp_path):
    big = torch.nn.Linear(2048, 4096, bias=False)                  # 32 MiB of weights
    ref = Reference.frozen_copy(big, spill_to(tmp_path))
    del big
    x = torch.randn(2, 2048)
    with torch.no_grad():
        ref.model(x)                                             # every page read: resident
    resident = rss_bytes()
    ref.release()
    assert resident - rss_bytes() > 24 * 2 ** 20
    with torch.no_grad():
        torch.testing.assert_close(ref.model(x), x @ ref.model.weight.t())   # and the weights are still there


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
from grpo.fast import heap as sysmem
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


@pytest.mark.slow
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
from grpo.fast import heap as sysmem
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


@pytest.mark.slow
@linux_only
def test_reuse_with_trim_every_hands_free_heap_pages_back_while_inside():
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}).stdout
    if out.strip() == "skip":
        pytest.skip("glibc's mallopt is not available")
    kept_released, trimmed_released = map(int, out.split())      # MiB handed back while still inside
    assert kept_released < 20, kept_released
    assert trimmed_released > 60, trimmed_released
