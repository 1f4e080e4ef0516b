"""Programmatic dependent launch (PDL) of the decode step's kernels (`FastHypeNet(pdl=True)`, `hypenet bench --pdl`):
who may ask for it, that the engine passes it to every kernel op of the decode step and only there, and that it
changes no number of this package's kernels. The launch itself needs a Hopper GPU: `python -m hypenet.fast.check`
compares the matrix-vector kernel with and without it there (exactly), and the engine with it against
`model.forward`; the kernel's peeled first slice (read before the wait) runs in Triton's CPU interpreter in
tests/test_fast_gemv.py."""

import pytest
import torch
from test_fast_engine import tiny_model

from hypenet.fast import FastHypeNet, attention
from hypenet.fast import engine as engine_module
from hypenet.fast import gemv as gemv_module
from hypenet.fast.attention import programmatic_launch_options, programmatic_launch_usable

pytestmark = pytest.mark.usefixtures("one_thread")


def test_only_a_gpu_that_can_launch_so_is_asked_to():
    assert not programmatic_launch_usable("cpu")
    assert programmatic_launch_options(True, torch.device("cpu")) == {"USE_GDC": False}  # the interpreter: no wait
    assert programmatic_launch_options(False, torch.device("cuda")) == {"USE_GDC": False}
    with pytest.raises(ValueError, match="pdl=True .* needs a CUDA GPU of compute capability 9.0 .* on cpu: build "
                                         "the engine with pdl=False"):
        FastHypeNet(tiny_model(), max_len=16, pdl=True)


def test_auto_launches_so_where_the_gpu_can(monkeypatch):
    model = tiny_model()
    assert FastHypeNet(model, max_len=16).pdl is False  # the default, "auto", on a CPU
    with pytest.raises(ValueError, match="pdl must be 'auto', True or False, got 'yes'"):
        FastHypeNet(model, max_len=16, pdl="yes")
    monkeypatch.setattr(engine_module, "programmatic_launch_usable", lambda device: True)  # as on an H200
    assert FastHypeNet(model, max_batch=1, max_len=16).pdl is True
    assert FastHypeNet(model, max_batch=2, max_len=16).pdl is True  # batch 2: the same bf16 bits on the H200
    assert FastHypeNet(model, max_batch=2, max_len=16, pdl=False).pdl is False
    assert FastHypeNet(model, max_batch=1, max_len=16, pdl=False).pdl is False


def test_a_gpu_before_hopper_is_told_to_run_without(monkeypatch):
    monkeypatch.setattr(attention, "programmatic_launch_usable", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match="compute capability 9.0 .* NVIDIA A100-SXM4-80GB cannot: run with pdl=False"):
        programmatic_launch_options(True, torch.device("cuda"))


def test_the_engine_passes_pdl_to_every_kernel_op_of_the_decode_step(monkeypatch):
    model = tiny_model()
    torch.manual_seed(3)
    ids = torch.randint(1, 101, (1, 14))
    plain = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8, gemv="triton")
    expected = [plain.prefill(ids[:, :10])] + [plain.decode(ids[:, t]) for t in range(10, 14)]

    seen = {"gemv": [], "decode_attention": [], "lightning_step": []}

    def spy(name, op):
        def recorded(*args):
            seen[name].append(args[-1])  # pdl: the ops' last argument
            return op(*args)
        return recorded

    monkeypatch.setattr(engine_module, "programmatic_launch_usable", lambda device: True)  # as on an H200
    monkeypatch.setattr(gemv_module, "gemv", spy("gemv", gemv_module.gemv))
    monkeypatch.setattr(engine_module, "decode_attention", spy("decode_attention", engine_module.decode_attention))
    monkeypatch.setattr(engine_module, "lightning_step", spy("lightning_step", engine_module.lightning_step))
    engine = FastHypeNet(model, max_batch=1, max_len=16, prefill_chunk=8, gemv="triton", pdl=True)
    got = [engine.prefill(ids[:, :10])]
    assert seen == {"gemv": [], "decode_attention": [], "lightning_step": []}  # prefill: none of these ops
    got += [engine.decode(ids[:, t]) for t in range(10, 14)]
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    # per step: 5 layers x (input projections, o_proj, gate/up, down) + the LM head; 2 attention and 3 lightning layers
    assert len(seen["gemv"]) == 4 * 21 and len(seen["decode_attention"]) == 4 * 2
    assert len(seen["lightning_step"]) == 4 * 3
    assert all(pdl is True for calls in seen.values() for pdl in calls)


def test_inductor_launches_its_kernels_so_where_it_can(monkeypatch):
    import torch._inductor.config as inductor_config

    assert engine_module._pdl_compile_options() == {"triton.enable_pdl": True}
    assert inductor_config.triton.enable_pdl is False  # the option is given to the decode step's compile only
    monkeypatch.delattr(inductor_config.triton, "enable_pdl")
    with pytest.warns(UserWarning, match="cannot launch its kernels with programmatic dependent launch"):
        assert engine_module._pdl_compile_options() == {}


def test_gpu_check_compares_the_engine_with_and_without_pdl(monkeypatch):
    """`python -m hypenet.fast.check` on a GPU that can launch so: batch 2 and batch 1 with pdl, each against
    model.forward and against the same engine without it (here on the CPU, where the ops run without the launch)."""
    from hypenet.fast import check

    for module in (check, engine_module):
        monkeypatch.setattr(module, "programmatic_launch_usable", lambda device: True)
    rows = {r["case"]: r for r in check.check_engine(torch.float32, "cpu")}
    assert rows["batch 2, pdl: 8 decode steps vs model.forward"]["ok"]
    assert rows["info: batch 2, pdl: vs the same without pdl"]["rel_err"] == 0
    for fusion in ("residual", "norm,swiglu,residual"):
        assert rows[f"batch 1, gemv=triton, gemv_fusion={fusion}, pdl: 8 decode steps vs model.forward"]["ok"]
        assert rows[f"info: batch 1, gemv=triton, gemv_fusion={fusion}, pdl: vs the same without pdl"]["rel_err"] == 0
