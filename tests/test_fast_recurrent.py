"""The lightning layer's in-place decode step (`hypenet.fast.recurrent`): its PyTorch reference against the model's
recurrence, the custom op under torch.compile (the state buffer updated in place, no copy), and the Triton kernel
through Triton's CPU interpreter when triton is installed (GPU: `python -m hypenet.fast.check`)."""

import os
import shutil

import pytest
import torch
from conftest import in_triton_interpreter, needs_triton

from hypenet.fast.recurrent import lightning_step, lightning_step_reference
from hypenet.model.lightning import lightning_attention_recurrent

pytestmark = pytest.mark.usefixtures("one_thread")


def step_case(batch=2, heads=3, dim_k=16, dim_v=16, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, batch, heads, dim_k, generator=generator).to(dtype)
    v = torch.randn(batch, heads, dim_v, generator=generator).to(dtype)
    log_decay = -torch.rand(heads, generator=generator)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    state = torch.randn(batch, heads, dim_k, dim_v, generator=generator).to(state_dtype)
    return q, k, v, log_decay, state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_reference_step_is_one_token_of_the_model_recurrence(dtype):
    q, k, v, log_decay, state = step_case(dtype=dtype)
    g = log_decay[None, None, :].expand(q.shape[0], 1, -1)
    expected_o, expected_state = lightning_attention_recurrent(q[:, None], k[:, None], v[:, None], g, 0.25,
                                                               initial_state=state)
    buffer = state.clone()
    o = lightning_step_reference(q, k, v, log_decay, buffer, 0.25)
    assert o.dtype == dtype and buffer.dtype == state.dtype
    assert torch.equal(o, expected_o[:, 0])
    assert torch.equal(buffer, expected_state)


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                                      reason="Inductor on CPU needs a C++ compiler")),
])
def test_compiled_op_updates_the_state_buffer_in_place(backend):
    q, k, v, log_decay, state = step_case()
    eager_state = state.clone()
    pointer = state.data_ptr()

    def step(q, k, v, log_decay, state):
        return lightning_step(q * 2, k, v, log_decay, state, 0.25) + 1

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    for _ in range(3):  # the state carries over from call to call
        out = compiled(q, k, v, log_decay, state)
        expected = step(q, k, v, log_decay, eager_state)
        assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert state.data_ptr() == pointer
    assert torch.allclose(state, eager_state, rtol=1e-6, atol=1e-6)


INTERPRETER_CHECK = """
import torch
from test_fast_recurrent import step_case
from hypenet.fast.recurrent import lightning_step_reference, lightning_step_triton

cases = [dict(), dict(batch=1, heads=2, dim_k=48, dim_v=40), dict(batch=3, heads=1, dim_k=8, dim_v=64),
         dict(dtype=torch.bfloat16), dict(batch=1, heads=4, dim_k=128, dim_v=128, dtype=torch.bfloat16)]
for case in cases:
    for block_v in (16, 32, 128):
        q, k, v, log_decay, state = step_case(**case, seed=block_v)
        expected_state = state.clone()
        expected = lightning_step_reference(q, k, v, log_decay, expected_state, 0.3).float()
        out = lightning_step_triton(q, k, v, log_decay, state, 0.3, block_v=block_v)
        assert out.dtype == q.dtype and out.shape == expected.shape, (case, out.dtype, out.shape)
        assert (state - expected_state).abs().max() < 1e-5, (case, block_v)
        # fp32: summation order only; bf16: the output's rounding, at most one bf16 step
        tolerance = 2e-5 if q.dtype == torch.float32 else 2**-7
        error = ((out.float() - expected).abs() / (expected.abs() + 1e-3)).max().item()
        assert error <= tolerance, (case, block_v, error)
print("ok")
"""


@needs_triton
def test_triton_step_in_the_triton_interpreter():
    """The kernel run by Triton's CPU interpreter: a fresh process, because TRITON_INTERPRET must be set before
    triton is first imported."""
    in_triton_interpreter(INTERPRETER_CHECK)


@needs_triton
def test_triton_step_rejects_what_it_cannot_run():
    from hypenet.fast.recurrent import lightning_step_triton

    q, k, v, log_decay, state = step_case()
    with pytest.raises(ValueError, match="fp32 state"):
        lightning_step_triton(q, k, v, log_decay, state.double(), 0.3)
    with pytest.raises(ValueError, match="contiguous"):
        lightning_step_triton(q, k, v, log_decay, state.transpose(-1, -2), 0.3)


def test_gpu_check_of_the_lightning_step_runs_its_cases_on_cpu():
    from hypenet.fast.check import check_lightning_step

    rows = check_lightning_step(torch.float32, "cpu")
    assert len(rows) == 6 and all(r["ok"] and r["rel_err"] < 1e-6 for r in rows), rows
    broken = check_lightning_step(torch.float32, "cpu",
                                  step=lambda q, k, v, log_decay, state, scale: 2 * lightning_step_reference(
                                      q, k, v, log_decay, state, scale))
    assert [r["ok"] for r in broken] == [False, True] * 3
