"""Batch-1 matrix-vector products of the decode step (`hypenet.fast.gemv`): the op's reference path, the engine
taking it when asked, and the Triton kernel through Triton's CPU interpreter when triton is installed (GPU:
`python -m hypenet.fast.check`)."""


import pytest
import torch
import torch.nn.functional as F
from conftest import in_triton_interpreter, needs_triton

from hypenet.fast import FastHypeNet
from hypenet.fast import gemv as gemv_module
from hypenet.fast.gemv import default_blocks, gemv, is_tuned, launch_settings, project, tune

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
    assert is_tuned(6, 4, torch.float32, "cpu") and not is_tuned(6, 4, torch.float32, "cuda")
    # no setting runs for a shape: it stays untuned, and the engine will not take the kernel for it
    assert tune([torch.zeros(5, 4)], configs[2:], timer) == {} and not is_tuned(5, 4, torch.float32, "cpu")
    from hypenet.fast.engine import _all_tuned

    assert _all_tuned(weights, strict=True, where="test")
    with pytest.warns(UserWarning, match=r"shapes \[\(5, 4\)\] on test: the decode step uses cuBLAS instead"):
        assert not _all_tuned([*weights, torch.zeros(5, 4)], strict=False, where="test")
    with pytest.raises(RuntimeError, match="build the engine with gemv='cublas'"):
        _all_tuned([torch.zeros(5, 4)], strict=True, where="test")
    fake_ms[(8, 512, 4, 4)] = 1.0
    assert tune(weights, configs, timer) == {}  # known shapes are skipped
    assert tune(weights[:1], configs, timer, again=True)[(6, 4)]["settings"] == (8, 512, 4, 4)
    assert launch_settings(6, 4, torch.float32, "cpu") == (8, 512, 4, 4)


def test_fused_loops_are_tuned_apart_from_the_plain_kernel(monkeypatch):
    """tune(loop="norm"): the kernel is timed with the norm inside its loop and the winner kept for that loop only;
    a loop never tuned takes the plain kernel's settings. The engine names which weights take which loop."""
    from test_fast_engine import tiny_model

    from hypenet.fast.gemv import loop_variant

    monkeypatch.setattr(gemv_module, "_TUNED", {})
    launched = []
    monkeypatch.setattr(gemv_module, "gemv_triton", lambda x, w, *settings, **kw: launched.append((settings, kw)))
    fake_ms = {(2, 1024, 4, 3): 2.0, (4, 1024, 4, 3): 3.0}

    def timer(fn):
        launched.clear()
        fn()
        blocks, kw = launched[0]
        settings = (*blocks, kw["num_warps"], kw["num_stages"])
        faster = 2.0 if kw.get("norm_weight") is not None and settings[0] == 4 else 0.0  # 4 rows win with the norm
        return fake_ms[settings] - faster

    weights = [torch.zeros(6, 4)]
    assert tune(weights, list(fake_ms), timer)[(6, 4)]["settings"] == (2, 1024, 4, 3)
    assert launched[0][1].get("norm_weight") is None and not launched[0][1]["swiglu"]
    assert loop_variant(True, False) == "norm" and loop_variant(True, True) == "norm,swiglu"
    report = tune(weights, list(fake_ms), timer, loop="norm")
    assert report == {(6, 4, "norm"): {"settings": (4, 1024, 4, 3), "ms": {(2, 1024, 4, 3): 2.0, (4, 1024, 4, 3): 1.0}}}
    assert launched[0][1]["norm_weight"].shape == (4,)
    assert launch_settings(6, 4, torch.float32, "cpu", loop="norm") == (4, 1024, 4, 3)
    assert launch_settings(6, 4, torch.float32, "cpu") == (2, 1024, 4, 3)
    assert launch_settings(6, 4, torch.float32, "cpu", loop="swiglu") == (2, 1024, 4, 3)  # the plain kernel's
    assert is_tuned(6, 4, torch.float32, "cpu", loop="norm") and not is_tuned(6, 4, torch.float32, "cpu", "swiglu")

    model = tiny_model()
    engine = FastHypeNet(model, max_batch=1, max_len=16, gemv="triton", gemv_fusion="norm,swiglu,residual")
    groups = engine._fused_loop_weights()
    layers = model.config.num_hidden_layers
    assert sorted(groups) == ["norm", "norm,swiglu"]
    assert [w.data_ptr() for w in groups["norm"]] == [
        *[b.input_weight.data_ptr() for b in engine.cache.layers], model.lm_head.weight.data_ptr()]
    assert len(groups["norm,swiglu"]) == layers and all(w.shape[0] == 2 * model.config.intermediate_size
                                                         for w in groups["norm,swiglu"])
    only_residual = FastHypeNet(model, max_batch=1, max_len=16, gemv="triton", gemv_fusion="residual")
    assert only_residual._fused_loop_weights() == {}
    swiglu = FastHypeNet(model, max_batch=1, max_len=16, gemv="triton", gemv_fusion="swiglu")
    assert list(swiglu._fused_loop_weights()) == ["swiglu"]


def test_engine_routes_decode_projections_through_the_op(monkeypatch):
    from test_fast_engine import rel_err, tiny_model

    model = tiny_model()
    torch.manual_seed(4)
    ids = torch.randint(1, 101, (1, 14))
    expected = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8)
    calls, fused = [], []
    reference = gemv_module.gemv_reference

    def recorded(x, w, norm_weight, eps, residual, swiglu):
        calls.append(tuple(w.shape))
        fused.append((norm_weight is not None, residual is not None, swiglu))
        return reference(x, w, norm_weight, eps, residual, swiglu)

    monkeypatch.setattr(gemv_module, "gemv_reference", recorded)
    engine = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8, gemv="triton", gemv_fusion=True)
    assert torch.equal(engine.prefill(ids[:, :10]), expected.prefill(ids[:, :10]))
    assert calls == []  # prefill keeps F.linear
    decoded = [engine.decode(ids[:, t]) for t in range(10, 14)]
    for t, logits in zip(range(10, 14), decoded):
        assert rel_err(logits, expected.decode(ids[:, t])) <= 1e-6
    # per step: every layer's packed input projection, its output projection, gate/up and down; then the LM head
    hidden, inner, vocab = 36, 56, 101
    per_layer = {(9 * 8 + 2 * 3 * 8 + 9 * 8, hidden), (9 * 8 * 3 + 9 * 8, hidden)}  # attention / lightning q,k,v,g
    assert len(calls) == 4 * (5 * 4 + 1)
    assert {(hidden, 9 * 8), (2 * inner, hidden), (hidden, inner), (vocab, hidden)} | per_layer >= set(calls)
    # (norm before, residual after, SiLU-gate) inside the op: input projections, o_proj, gate/up, down; LM head
    assert fused[:21] == [(True, False, False), (False, True, False), (True, False, True), (False, True, False)] * 5 + [
        (True, False, False)]
    # what the engine tunes on CUDA is what its decode step passes to the op, weight for weight
    assert sorted(tuple(w.shape) for w in engine._gemv_weights()) == sorted(calls[:len(calls) // 4])
    # some of the parts: SiLU-gate and residual inside the op, the norms left to PyTorch
    fused.clear()
    some = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8, gemv="triton", gemv_fusion="residual, swiglu")
    assert some.gemv_fusion == ("swiglu", "residual")
    some.prefill(ids[:, :10])
    assert rel_err(some.decode(ids[:, 10]), decoded[0]) <= 1e-6
    assert fused == [(False, False, False), (False, True, False), (False, False, True), (False, True, False)] * 5 + [
        (False, False, False)]
    with pytest.raises(ValueError, match=r"unknown gemv fusion part\(s\) \['rope'\]: choose among norm, swiglu"):
        FastHypeNet(model, max_batch=1, max_len=16, gemv="triton", gemv_fusion="norm,rope")
    # the default: all of it inside the op, as with gemv_fusion=True
    fused.clear()
    default = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8, gemv="triton")
    assert default.gemv_fusion == ("norm", "swiglu", "residual")
    default.prefill(ids[:, :10])
    assert rel_err(default.decode(ids[:, 10]), decoded[0]) <= 1e-6
    assert fused == [(True, False, False), (False, True, False), (True, False, True), (False, True, False)] * 5 + [
        (True, False, False)]
    # only the residual adds inside the op
    fused.clear()
    residual = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8, gemv="triton", gemv_fusion="residual")
    residual.prefill(ids[:, :10])
    assert rel_err(residual.decode(ids[:, 10]), decoded[0]) <= 1e-6
    assert fused == [(False, False, False), (False, True, False)] * 10 + [(False, False, False)]
    # without fusion: the same products through the op, the work around them left to PyTorch
    fused.clear()
    apart = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8, gemv="triton", gemv_fusion="none")
    apart.prefill(ids[:, :10])
    assert rel_err(apart.decode(ids[:, 10]), decoded[0]) <= 1e-6
    assert fused == [(False, False, False)] * 21
    unfused = FastHypeNet(model, max_batch=1, max_len=16, fuse_projections=False, gemv="triton")
    assert len(unfused._gemv_weights()) == len(engine._gemv_weights()) + 5 * (3 + 1)  # 5 layers: q,k,v,g; gate,up
    assert FastHypeNet(model, max_batch=2, max_len=16, gemv="triton").gemv is False  # batch 1 only
    assert FastHypeNet(model, max_len=16).gemv is False  # the default, "auto", takes the kernel on CUDA only
    with pytest.raises(ValueError, match="gemv must be"):
        FastHypeNet(model, max_len=16, gemv="cutlass")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_does_what_the_model_does_around_a_projection(dtype):
    """norm -> projection -> SiLU-gate -> residual in the reference equals the model's own modules, bit for bit."""
    from hypenet.model.modeling_hypenet import HypeNetRMSNorm

    torch.manual_seed(0)
    norm = HypeNetRMSNorm(24, eps=1e-6).to(dtype)
    norm.weight.data = torch.randn(24).to(dtype)
    x, residual = torch.randn(3, 24).to(dtype), torch.randn(3, 10).to(dtype)
    gate, up, down = (torch.randn(10, 24).to(dtype) for _ in range(3))
    stacked = torch.cat([gate, up])
    h = norm(x)
    gate_out, up_out = F.linear(h, stacked).chunk(2, dim=-1)  # the engine stacks gate and up into one product
    expected = residual + F.silu(gate_out) * up_out
    assert torch.allclose(expected, residual + F.silu(F.linear(h, gate)) * F.linear(h, up), rtol=1e-2, atol=1e-2)
    got = gemv_module.gemv_reference(x, stacked, norm.weight, norm.eps, residual, swiglu=True)
    assert torch.equal(got, expected)
    assert torch.equal(project(x, stacked, True, norm=norm, residual=residual, swiglu=True), expected)
    assert torch.equal(project(x, stacked, False, norm=norm, residual=residual, swiglu=True), expected)
    assert torch.equal(gemv(x, down, norm.weight, norm.eps), F.linear(h, down))
    assert torch.equal(gemv(x, down, residual=residual), residual + F.linear(x, down))


INTERPRETER_CHECK = """
import torch
import torch.nn.functional as F
from hypenet.fast.gemv import gemv_triton

torch.manual_seed(0)
for n, k in [(64, 96), (37, 100), (40, 300), (16, 8)]:
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

# norm before, SiLU-gate, residual after. SiLU-gate and residual: the kernel rounds where the reference (eager
# PyTorch) does. The norm: one pass, the normalised x never rounded, so in bf16 it is as close to fp64 as the
# reference is, not equal to it.
from hypenet.fast.gemv import gemv_reference
for dtype in (torch.float32, torch.bfloat16):
    for n, k in [(24, 96), (37, 300)]:
        x, scale = torch.randn(1, k).to(dtype), torch.randn(k).to(dtype)
        w, residual = (torch.randn(2 * n, k) / k**0.5).to(dtype), torch.randn(1, 2 * n).to(dtype)
        for options in [dict(norm_weight=scale, eps=1e-6), dict(swiglu=True), dict(residual=residual),
                        dict(norm_weight=scale, eps=1e-6, swiglu=True), dict(residual=residual[:, :n], swiglu=True)]:
            for block_n, block_k in [(None, None), (2, 64), (4, 32)]:
                out = gemv_triton(x, w, block_n=block_n, block_k=block_k, **options)
                expected = gemv_reference(x, w, **options)
                assert out.shape == expected.shape and out.dtype == dtype, (options, out.shape, expected.shape)
                error = ((out.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
                if dtype == torch.float32:
                    assert error <= 1e-5, (n, k, options, error)
                elif "norm_weight" not in options:
                    # rounded to nearest even through the bits (Triton's interpreter would truncate); only the order
                    # of the sums differs, one bf16 step at most
                    assert error <= 2**-8, (n, k, options, error)
                else:
                    exact = gemv_reference(x.double(), w.double(), **{
                        key: v.double() if torch.is_tensor(v) else v for key, v in options.items()})
                    off = [((y.double() - exact).norm() / exact.norm()).item() for y in (out, expected)]
                    assert error <= 2**-6 and off[0] <= 2**-7, (n, k, options, error, off)

# pdl=True: the first weight slice read before the loop (before the wait for the kernel before, on a GPU that launches
# with PDL; here the same kernel without the wait): the same products in the same order, the same bits
for dtype in (torch.float32, torch.bfloat16):
    for n, k, block_k in [(24, 96, 32), (37, 300, 64), (16, 8, 32)]:
        x, scale = torch.randn(1, k).to(dtype), torch.randn(k).to(dtype)
        w, residual = (torch.randn(2 * n, k) / k**0.5).to(dtype), torch.randn(1, n).to(dtype)
        for options in [{}, dict(norm_weight=scale, eps=1e-6, swiglu=True), dict(residual=residual, swiglu=True)]:
            peeled = gemv_triton(x, w, block_n=2, block_k=block_k, pdl=True, **options)
            assert torch.equal(peeled, gemv_triton(x, w, block_n=2, block_k=block_k, **options)), (n, k, options)
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
    with pytest.raises(ValueError, match="even number of rows"):
        gemv_triton(torch.randn(1, 8), torch.randn(5, 8), swiglu=True)
    with pytest.raises(ValueError, match="norm_weight must have shape"):
        gemv_triton(torch.randn(1, 8), torch.randn(4, 8), norm_weight=torch.ones(4))
    with pytest.raises(ValueError, match=r"residual must have shape \(1, 2\)"):
        gemv_triton(torch.randn(1, 8), torch.randn(4, 8), residual=torch.ones(1, 4), swiglu=True)


def test_gpu_check_of_the_gemv_runs_its_cases_on_cpu():
    from hypenet.fast.check import check_gemv

    rows = check_gemv(torch.float32, "cpu")
    assert len(rows) == 6 + 3 * 2 and all(r["ok"] and r["rel_err"] < 1e-5 for r in rows), rows
    broken = check_gemv(torch.float32, "cpu", kernel=lambda x, w, **kw: gemv_module.gemv_reference(x, w, **kw) * 1.001)
    assert not any(r["ok"] for r in broken)

    def gate_without_silu(x, w, **kw):
        y = gemv_module.gemv_reference(x, w, **{**kw, "swiglu": False})
        return y[:, :y.shape[1] // 2] if kw.get("swiglu") else y

    no_silu = check_gemv(torch.float32, "cpu", kernel=gate_without_silu)
    assert [r["ok"] for r in no_silu] == [True] * 8 + [False] * 2 + [True] * 2


def test_gpu_check_of_the_engine_with_the_kernel_runs_on_cpu(tmp_path):
    """`python -m hypenet.fast.check --cpu-dry-run`: the engine rows with the matrix-vector op, with and without the
    norms / SiLU-gate / residual inside it, pass on the CPU (the op's reference there)."""
    import json

    from hypenet.fast.check import main

    assert main(["--cpu-dry-run", "--only", "engine", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "fast_check.json").read_text())["results"]
    cases = {(r["dtype"], r["case"]): r for r in rows if r["check"] == "engine"}
    for dtype in ("float32", "bfloat16"):
        for variant in ("residual", "none", "norm,swiglu,residual"):
            assert cases[(dtype, f"batch 1, gemv=triton, gemv_fusion={variant}: 8 decode steps vs model.forward")]["ok"]
            # in bf16, also how far each is from the same weights in fp32: at most twice the reference's own distance
            name = f"batch 1, gemv=triton, gemv_fusion={variant}: vs the same weights in fp32, at most 2x " \
                "model.forward's distance"
            to_fp32 = cases.get((dtype, name))
            assert (to_fp32 is None) == (dtype == "float32")
            if to_fp32:
                reference_to_fp32 = cases[(dtype, "info: model.forward, row 0, positions 692-699 vs the same weights "
                                                  "in fp32")]
                assert to_fp32["ok"] and to_fp32["bound"] == pytest.approx(2 * reference_to_fp32["rel_err"])
                assert 0 < to_fp32["rel_err"] <= to_fp32["bound"]
                # and against model.forward within bf16's own error there (1e-2 at least)
                direct = cases[(dtype, f"batch 1, gemv=triton, gemv_fusion={variant}: 8 decode steps vs "
                                       "model.forward")]
                assert direct["bound"] == max(1e-2, reference_to_fp32["rel_err"])
                assert direct["rel_err"] <= direct["bound"]
    batch2 = cases[("bfloat16", "engine prefill + 8 steps vs the same weights in fp32, at most 2x model.forward's "
                                "distance")]
    assert batch2["ok"] and 0 < batch2["rel_err"] <= batch2["bound"]
    assert "(bound " in (tmp_path / "fast_check.md").read_text()
    # in bf16 the reference's own cached decode (what generate() runs) beside the engine: both near model.forward
    stepped = cases[("bfloat16", "info: model.forward with its cache, 8 steps, vs model.forward")]["rel_err"]
    engine = cases[("bfloat16", "info: 8 decode steps vs model.forward with its cache")]["rel_err"]
    assert 0 < stepped < 1e-2 and 0 < engine < 1e-2
    assert ("float32", "info: model.forward with its cache, 8 steps, vs model.forward") not in cases
    # and model.forward with the lightning layers in PyTorch: on the CPU that is what "auto" runs anyway
    assert cases[("bfloat16", "info: model.forward, lightning in PyTorch, vs model.forward")]["rel_err"] == 0
    in_torch = cases[("bfloat16", "info: 8 decode steps vs model.forward, lightning in PyTorch")]["rel_err"]
    assert in_torch == cases[("bfloat16", "8 decode steps (graph replay) vs model.forward")]["rel_err"]


def test_fusion_parts_and_the_bench_option():
    """fusion_parts reads True / False / comma lists / iterables in FUSION_PARTS' order; `hypenet bench
    --gemv-fusion` takes all parts without a list, a checked list with one, and refuses unknown parts."""
    import argparse

    from hypenet.bench.cli import register
    from hypenet.fast.gemv import FUSION_PARTS, fusion_parts

    assert fusion_parts(True) == FUSION_PARTS == ("norm", "swiglu", "residual")
    assert fusion_parts(False) == fusion_parts(None) == fusion_parts("") == fusion_parts([]) == ()
    assert fusion_parts("residual, norm") == fusion_parts(["residual", "norm"]) == ("norm", "residual")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    parse = lambda *extra: parser.parse_args(["bench", "tiny-hypenet", *extra]).gemv_fusion  # noqa: E731
    assert parse() == parse("--gemv-fusion") == "norm,swiglu,residual"
    assert parse("--gemv-fusion", "residual") == "residual"
    assert parse("--gemv-fusion", "none") == "none" and fusion_parts("none") == ()
    assert parse("--gemv-fusion", "residual,swiglu") == "swiglu,residual"
    with pytest.raises(SystemExit):
        parse("--gemv-fusion", "rope")


def test_the_bf16_check_against_fp32_fails_an_output_more_than_twice_as_far_as_the_reference():
    """fast.check's test of a bf16 path against the same weights in fp32 (flash-attention's): ok at up to 2x the
    reference's own distance, not beyond, and never with a non-finite value."""
    from hypenet.fast.check import within_reference_distance

    torch.manual_seed(0)
    exact = torch.randn(4, 100)
    noise = torch.randn(4, 100)
    reference = exact + 0.01 * noise
    near = within_reference_distance({"case": "x"}, exact + 0.019 * noise, exact, reference)
    far = within_reference_distance({"case": "x"}, exact + 0.021 * noise, exact, reference)
    assert near["bound"] == pytest.approx(2 * 0.01 * noise.norm().item() / exact.norm().item())
    assert near["ok"] and not far["ok"]
    broken = (exact + 0.001 * noise).index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("nan")))
    assert not within_reference_distance({"case": "x"}, broken, exact, reference)["ok"]
