"""The compiled few-row kernel (grpo/fast/native.py): equal to torch's product, used by decoding,
and out of the way wherever it does not apply."""

import shutil

import pytest
import torch

from grpo.fast import native
from grpo.fast.few_rows import FewRows

HAS_TOOLS = shutil.which("cc") is not None and native._cpu_has("avx2", "fma")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The module as if never used, building into an empty cache."""
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_reason", None)
    return tmp_path


@pytest.mark.skipif(not HAS_TOOLS, reason="needs a C compiler and an AVX2+FMA CPU")
def test_builds_here_and_caches(fresh):
    assert native.why_not() is None
    built = list((fresh / "native").glob("few_rows-*/few_rows.so"))
    assert len(built) == 1
    assert not [p for p in (fresh / "native").iterdir() if p.name.startswith(".")]   # no temporary folder left


@pytest.mark.skipif(not HAS_TOOLS, reason="needs a C compiler and an AVX2+FMA CPU")
@pytest.mark.parametrize("out_features,in_features,rows", [
    (1531, 333, 21),     # rows past one 16-column block; out not a multiple of 6
    (5, 7, 6),           # fewer than six weight rows: the one-row path only
    (6000, 64, 16),      # one full block of columns
    (192, 576, 32),      # the most rows it takes
    (12, 1, 7),          # a single input feature
])
def test_equals_torch(out_features, in_features, rows):
    g = torch.Generator().manual_seed(out_features + rows)
    w = torch.randn(out_features, in_features, generator=g)
    x = torch.randn(rows, in_features, generator=g)
    got = native.left_product(w, x)
    assert got is not None and got.shape == (rows, out_features)
    torch.testing.assert_close(got, x @ w.t(), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not HAS_TOOLS, reason="needs a C compiler and an AVX2+FMA CPU")
def test_same_result_on_one_thread():
    w, x = torch.randn(600, 96), torch.randn(16, 96)
    two = native.left_product(w, x).clone()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = native.left_product(w, x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)       # each output is one thread's sum, in the same order


@pytest.mark.skipif(not HAS_TOOLS, reason="needs a C compiler and an AVX2+FMA CPU")
def test_declines_what_it_does_not_cover(monkeypatch):
    w, x = torch.randn(64, 32), torch.randn(native.MIN_ROWS, 32)
    assert native.left_product(w, x) is not None
    assert native.left_product(w, torch.randn(native.MAX_ROWS + 1, 32)) is None
    assert native.left_product(w, torch.randn(native.MIN_ROWS - 1, 32)) is None
    assert native.left_product(w.double(), x.double()) is None
    assert native.left_product(torch.randn(32, 64).t(), x) is None                 # not contiguous
    assert native.left_product(w.requires_grad_(), x) is None                       # would lose the gradient
    with torch.no_grad():
        assert native.left_product(w, x) is not None
        assert native.left_product(torch.nn.Parameter(w.detach()), x) is not None

        class Wrapped(torch.Tensor):          # a tensor subclass (a sharded DTensor, say): its data
            pass                              # pointer need not be the whole matrix
        assert native.left_product(w.detach().as_subclass(Wrapped), x) is None
    monkeypatch.setenv("GRPO_NATIVE", "0")
    assert native.left_product(w.detach(), x) is None
    assert "switched off" in native.why_not()


def test_build_failure_is_reported_and_torch_used(fresh, monkeypatch):
    monkeypatch.setenv("CC", "false")           # a "compiler" that always fails
    reason = native.why_not()
    assert reason is not None
    if HAS_TOOLS:
        assert "failed" in reason
    w, x = torch.randn(10, 8), torch.randn(8, 8)
    assert native.left_product(w, x) is None
    torch.testing.assert_close(FewRows().linear(x, w, None), x @ w.t())


@pytest.mark.skipif(not HAS_TOOLS, reason="needs a C compiler and an AVX2+FMA CPU")
def test_decoding_linears_take_the_kernel(monkeypatch):
    calls = []
    real = native.left_product

    def counting(weight, x):
        out = real(weight, x)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(native, "left_product", counting)
    lin = torch.nn.Linear(24, 40)
    x = torch.randn(2, 4, 24)
    with torch.no_grad(), FewRows().decoding_linears(lin):
        got = lin(x)
    assert calls == [True]
    calls.clear()
    with torch.no_grad(), FewRows(use_native=False).decoding_linears(lin):       # the lever off: MKL's product
        torch.testing.assert_close(lin(x), got, rtol=1e-5, atol=1e-5)
    assert calls == []
    torch.testing.assert_close(got, torch.nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
