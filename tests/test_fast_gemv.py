"""Batch-1 matrix-vector products of the decode step (`hypenet.fast.gemv`): the op's reference path, the engine
taking it when asked, and the Triton kernel through Triton's CPU interpreter when triton is installed (GPU:
`python -m hypenet.fast.check`)."""


import pytest
import torch
import torch.nn.functional as F
from conftest import in_triton_interpreter, needs_triton

from hypenet.fast import FastHypeNet
from hypenet.fast import gemv as gemv_module
from hypenet.fast.gemv import default_blocks, gemv, launch_settings, project, tune

pytestmark = pytest.mark.usefixtures("one_thread")


def test_op_and_project_are_f_linear_off_the_gpu():
    torch.manual_seed(0)
    x, w = torch.randn(3, 1, 20), torch.randn(7, 20)
    assert torch.equal(gemv(x[:, 0], w), F.linear(x[:, 0], w))
    assert torch.equal(project(x, w, use_gemv=True), F.linear(x, w))
    layer = torch.nn.Linear(20, 7)
    assert torch.equal(project(x, layer, use_gemv=True), layer(x))  # a bias: plain F.linear
    assert torch.equal(project(x, layer, use_gemv=False), layer(x))


def test_default_blocks():
    assert default_blocks(2048, 2048) == (2, 1024)
    assert default_blocks(151936, 6144) == (2, 1024)
    assert default_blocks(40, 100) == (2, 128)


def test_tune_keeps_the_fastest_settings_per_shape(monkeypatch):
    monkeypatch.setattr(gemv_module, "_TUNED", {})
    launched = []
    monkeypatch.setattr(gemv_module, "gemv_triton", lambda x, w, *settings, **kw: launched.append(
        (tuple(w.shape), *settings, kw["num_warps"], kw["num_stages"])))
    configs = [(8, 512, 4, 4), (16, 256, 8, 3), (64, 64, 4, 4)]
    fake_ms = {(8, 512, 4, 4): 3.0, (16, 256, 8, 3): 2.0}

    def timer(fn):  # the time of the settings fn launches with; the third does not compile
        launched.clear()
        fn()
        settings = launched[0][1:]
        if settings not in fake_ms:
            raise RuntimeError("out of resources")
        return fake_ms[settings] * len(launched)

    weights = [torch.zeros(6, 4), torch.zeros(6, 4), torch.zeros(3, 4, dtype=torch.bfloat16)]
    report = tune(weights, configs, timer)
    assert report[(6, 4)] == {"settings": (16, 256, 8, 3), "ms": {(8, 512, 4, 4): 3.0, (16, 256, 8, 3): 2.0}}
    assert report[(3, 4)]["settings"] == (16, 256, 8, 3)
    assert launch_settings(6, 4, torch.float32, "cpu") == (16, 256, 8, 3)  # remembered per shape, dtype, device
    assert launch_settings(6, 4, torch.bfloat16, "cpu") == (*default_blocks(6, 4), 4, 3)
    assert launch_settings(6, 4, torch.float32, "cuda") == (*default_blocks(6, 4), 4, 3)
    fake_ms[(8, 512, 4, 4)] = 1.0
    assert tune(weights, configs, timer) == {}  # known shapes are skipped
    assert tune(weights[:1], configs, timer, again=True)[(6, 4)]["settings"] == (8, 512, 4, 4)
    assert launch_settings(6, 4, torch.float32, "cpu") == (8, 512, 4, 4)


def test_engine_routes_decode_projections_through_the_op(monkeypatch):
    from test_fast_engine import rel_err, tiny_model

    model = tiny_model()
    torch.manual_seed(4)
    ids = torch.randint(1, 101, (1, 14))
    expected = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8)
    calls = []
    reference = gemv_module.gemv_reference
    monkeypatch.setattr(gemv_module, "gemv_reference", lambda x, w: calls.append(tuple(w.shape)) or reference(x, w))
    engine = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8, gemv="triton")
    assert torch.equal(engine.prefill(ids[:, :10]), expected.prefill(ids[:, :10]))
    assert calls == []  # prefill keeps F.linear
    for t in range(10, 14):
        assert rel_err(engine.decode(ids[:, t]), expected.decode(ids[:, t])) <= 1e-6
    # per step: every layer's packed input projection, its output projection, gate/up and down; then the LM head
    hidden, inner, vocab = 36, 56, 101
    per_layer = {(9 * 8 + 2 * 3 * 8 + 9 * 8, hidden), (9 * 8 * 3 + 9 * 8, hidden)}  # attention / lightning q,k,v,g
    assert len(calls) == 4 * (5 * 4 + 1)
    assert {(hidden, 9 * 8), (2 * inner, hidden), (hidden, inner), (vocab, hidden)} | per_layer >= set(calls)
    # what the engine tunes on CUDA is what its decode step passes to the op, weight for weight
    assert sorted(tuple(w.shape) for w in engine._gemv_weights()) == sorted(calls[:len(calls) // 4])
    unfused = FastHypeNet(model, max_batch=1, max_len=16, fuse_projections=False, gemv="triton")
    assert len(unfused._gemv_weights()) == len(engine._gemv_weights()) + 5 * (3 + 1)  # 5 layers: q,k,v,g; gate,up
    assert FastHypeNet(model, max_batch=2, max_len=16, gemv="triton").gemv is False  # batch 1 only
    assert FastHypeNet(model, max_len=16).gemv is False  # the default, "auto", takes the kernel on CUDA only
    with pytest.raises(ValueError, match="gemv must be"):
        FastHypeNet(model, max_len=16, gemv="cutlass")


INTERPRETER_CHECK = """
import torch
import torch.nn.functional as F
from hypenet.fast.gemv import gemv_triton

torch.manual_seed(0)
for n, k in [(64, 96), (37, 100), (200, 1030), (16, 8)]:
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1, k).to(dtype)
        w = torch.randn(n, k).to(dtype)
        expected = F.linear(x.double(), w.double())
        for block_n, block_k in [(None, None), (8, 32), (16, 64), (4, 16), (1, 64), (2, 32)]:
            out = gemv_triton(x, w, block_n=block_n, block_k=block_k)
            assert out.shape == (1, n) and out.dtype == dtype, (n, k, out.shape, out.dtype)
            error = ((out.double() - expected).abs().max() / expected.abs().max()).item()
            assert error <= (1e-5 if dtype == torch.float32 else 2**-7), (n, k, dtype, block_n, block_k, error)
# a weight that is a row slice of a larger one (the engine's packed weights are views)
packed = torch.randn(300, 64)
x = torch.randn(1, 64)
assert torch.allclose(gemv_triton(x, packed[100:228]), F.linear(x, packed[100:228]), rtol=1e-5, atol=1e-5)
print("ok")
"""


@needs_triton
def test_gemv_kernel_in_the_triton_interpreter():
    in_triton_interpreter(INTERPRETER_CHECK)


@needs_triton
def test_gemv_kernel_rejects_what_it_cannot_run():
    from hypenet.fast.gemv import gemv_triton

    with pytest.raises(ValueError, match="one row"):
        gemv_triton(torch.randn(2, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="columns"):
        gemv_triton(torch.randn(1, 9), torch.randn(4, 8))
    with pytest.raises(ValueError, match="contiguous"):
        gemv_triton(torch.randn(1, 8), torch.randn(8, 4).t())


def test_gpu_check_of_the_gemv_runs_its_cases_on_cpu():
    from hypenet.fast.check import check_gemv

    rows = check_gemv(torch.float32, "cpu")
    assert len(rows) == 6 and all(r["ok"] and r["rel_err"] < 1e-5 for r in rows), rows
    broken = check_gemv(torch.float32, "cpu", kernel=lambda x, w: F.linear(x, w) * 1.001)
    assert not any(r["ok"] for r in broken)
