"""Lightning Attention kernels: the chunked form against the token-by-token recurrence, and the dispatcher."""

import math
import sys

import pytest
import torch

from hypenet.model import lightning
from hypenet.model.lightning import (
    alibi_log_decay,
    lightning_attention,
    lightning_attention_chunked,
    lightning_attention_recurrent,
)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These tensors are tiny: worker threads only add overhead, and spin when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(B, T, H, K, V, *, per_token_g, seed, dtype=torch.float64, with_state=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    if per_token_g:
        g = -2.0 * torch.rand(B, T, H, generator=gen, dtype=dtype)
        g = g.masked_fill(torch.rand(B, T, H, generator=gen) < 0.3, 0.0)  # zeros, as at padded positions
    else:
        g = alibi_log_decay(H).to(dtype).expand(B, T, H)
    state = torch.randn(B, H, K, V, generator=gen, dtype=dtype) if with_state else None
    return q, k, v, g, state


# ---- decay --------------------------------------------------------------------------------------------


def alibi_slopes_reference(n_heads):
    """ALiBi's slope rule, written as a geometric sequence start * ratio**i (start = ratio = 2**(-8/n))."""

    def geometric(n):
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return geometric(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return geometric(closest) + geometric(2 * closest)[0::2][: n_heads - closest]


def test_alibi_log_decay_power_of_two():
    g = alibi_log_decay(8)
    assert g.shape == (8,) and g.dtype == torch.float32
    assert torch.equal(g, -torch.tensor([2.0**-h for h in range(1, 9)]))


@pytest.mark.parametrize("n_heads", [1, 2, 3, 9, 12, 16, 20, 40])
def test_alibi_log_decay_matches_alibi_rule(n_heads):
    g = alibi_log_decay(n_heads)
    assert g.shape == (n_heads,) and g.dtype == torch.float32
    assert (g < 0).all()
    expected = -torch.tensor(alibi_slopes_reference(n_heads), dtype=torch.float32)
    torch.testing.assert_close(g, expected, rtol=1e-6, atol=0)


def test_alibi_log_decay_non_power_of_two_written_out():
    powers = [2.0**-h for h in range(1, 9)]
    assert torch.allclose(alibi_log_decay(9), -torch.tensor(powers + [2.0**-0.5]))
    interleaved = [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    assert torch.allclose(alibi_log_decay(12), -torch.tensor(powers + interleaved))


# ---- chunked == recurrent -----------------------------------------------------------------------------


@pytest.mark.parametrize("per_token_g", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("T", [1, 5, 63, 64, 65, 130, 200])
def test_chunked_matches_recurrent(T, chunk_size, with_state, per_token_g):
    seed = T * 1000 + chunk_size * 10 + 2 * with_state + per_token_g
    gen = torch.Generator().manual_seed(seed)
    B = int(torch.randint(1, 4, (), generator=gen))
    H = [1, 3, 4, 9][int(torch.randint(0, 4, (), generator=gen))]
    K, V = 8, 6
    q, k, v, g, state = make_inputs(B, T, H, K, V, per_token_g=per_token_g, seed=seed, with_state=with_state)
    scale = K**-0.5

    o_ref, s_ref = lightning_attention_recurrent(q, k, v, g, scale, state)
    o, s = lightning_attention_chunked(q, k, v, g, scale, state, chunk_size=chunk_size)
    assert o.shape == (B, T, H, V) and s.shape == (B, H, K, V)
    assert o.dtype == s.dtype == torch.float64
    assert (o - o_ref).abs().max() <= 1e-10
    assert (s - s_ref).abs().max() <= 1e-10

    o_dispatch, s_dispatch = lightning_attention(q, k, v, g, scale, state, backend="torch", chunk_size=chunk_size)
    assert (o_dispatch - o_ref).abs().max() <= 1e-10 and (s_dispatch - s_ref).abs().max() <= 1e-10


def test_split_sequence_carries_state():
    q, k, v, g, state = make_inputs(2, 150, 3, 8, 5, per_token_g=True, seed=1, with_state=True)
    o_whole, s_whole = lightning_attention_chunked(q, k, v, g, 0.5, state, chunk_size=32)
    split = 70  # not a multiple of the chunk size
    first, second = slice(0, split), slice(split, None)
    o1, s1 = lightning_attention_chunked(q[:, first], k[:, first], v[:, first], g[:, first], 0.5, state, chunk_size=32)
    o2, s2 = lightning_attention_chunked(q[:, second], k[:, second], v[:, second], g[:, second], 0.5, s1, chunk_size=32)
    assert (torch.cat([o1, o2], dim=1) - o_whole).abs().max() <= 1e-10
    assert (s2 - s_whole).abs().max() <= 1e-10


def test_decode_steps_continue_prefill():
    q, k, v, g, _ = make_inputs(1, 40, 4, 8, 8, per_token_g=False, seed=2)
    o_whole, s_whole = lightning_attention(q, k, v, g, 0.25, backend="torch", chunk_size=16)
    _, state = lightning_attention(q[:, :32], k[:, :32], v[:, :32], g[:, :32], 0.25, backend="torch", chunk_size=16)
    for t in range(32, 40):
        step = slice(t, t + 1)
        o_t, state = lightning_attention(q[:, step], k[:, step], v[:, step], g[:, step], 0.25, state, backend="torch")
        assert (o_t - o_whole[:, step]).abs().max() <= 1e-10
    assert (state - s_whole).abs().max() <= 1e-10


@pytest.mark.parametrize("with_state", [False, True])
def test_left_padding_leaves_state_unchanged(with_state):
    T, pad = 50, 13
    q, k, v, g, state = make_inputs(1, T, 3, 8, 4, per_token_g=False, seed=3, with_state=with_state)
    o, s = lightning_attention_chunked(q, k, v, g, 0.3, state, chunk_size=16)

    def left_pad(x, fill):
        return torch.cat([torch.full((1, pad, *x.shape[2:]), fill, dtype=x.dtype), x], dim=1)

    q_pad = torch.cat([torch.randn(1, pad, 3, 8, dtype=q.dtype), q], dim=1)  # q at padding is arbitrary
    o_pad, s_pad = lightning_attention_chunked(
        q_pad, left_pad(k, 0.0), left_pad(v, 0.0), left_pad(g, 0.0), 0.3, state, chunk_size=16
    )
    assert (s_pad - s).abs().max() <= 1e-10
    assert (o_pad[:, pad:] - o).abs().max() <= 1e-10


def test_low_precision_inputs_keep_fp32_state():
    q, k, v, g, state = make_inputs(2, 33, 2, 8, 8, per_token_g=False, seed=4, dtype=torch.float32, with_state=True)
    o_ref, s_ref = lightning_attention_recurrent(q, k, v, g, 0.3, state)
    o, s = lightning_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, 0.3, state, backend="torch")
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    torch.testing.assert_close(o.float(), o_ref, rtol=0.05, atol=0.05)
    _, no_state = lightning_attention(q, k, v, g, 0.3, output_final_state=False, backend="torch")
    assert no_state is None


# ---- gradients ----------------------------------------------------------------------------------------


def test_chunked_gradcheck():
    q, k, v, g, state = make_inputs(1, 7, 2, 3, 2, per_token_g=True, seed=5, with_state=True)
    inputs = [x.requires_grad_() for x in (q, k, v, g, state)]

    def f(q, k, v, g, state):
        return lightning_attention_chunked(q, k, v, g, 0.7, state, chunk_size=4)

    assert torch.autograd.gradcheck(f, inputs)


def test_chunked_gradients_match_recurrent():
    q, k, v, g, state = make_inputs(2, 45, 3, 6, 5, per_token_g=True, seed=6, with_state=True)
    grads = []
    for attention in (lightning_attention_recurrent, lightning_attention_chunked):
        inputs = [x.clone().requires_grad_() for x in (q, k, v, g, state)]
        o, s = attention(*inputs[:4], 0.4, inputs[4])
        (o.square().sum() + s.sum()).backward()
        grads.append([x.grad for x in inputs])
    for grad_ref, grad in zip(*grads):
        assert (grad - grad_ref).abs().max() <= 1e-9


# ---- backend dispatch ---------------------------------------------------------------------------------


def test_fla_backend_without_fla_says_how_to_install(monkeypatch):
    # importing fla now fails, as where it is not installed: its submodules too, which an earlier test may have
    # imported where it is (a cached `fla.ops.simple_gla` imports without its parent)
    for name in {"fla", "fla.ops", "fla.ops.simple_gla", *(m for m in sys.modules if m.startswith("fla."))}:
        monkeypatch.setitem(sys.modules, name, None)
    q, k, v, g, _ = make_inputs(1, 4, 2, 4, 4, per_token_g=False, seed=7, dtype=torch.float32)
    with pytest.raises(ImportError, match="pip install flash-linear-attention"):
        lightning_attention(q, k, v, g, 0.5, backend="fla")


def test_auto_backend_on_cpu_uses_torch(monkeypatch):
    def no_fla(*args, **kwargs):
        raise AssertionError("backend='auto' must not pick fla for CPU tensors")

    monkeypatch.setattr(lightning, "_fla_importable", lambda: True)
    monkeypatch.setattr(lightning, "_lightning_attention_fla", no_fla)
    q, k, v, g, _ = make_inputs(1, 20, 2, 4, 4, per_token_g=False, seed=8)
    o, s = lightning_attention(q, k, v, g, 0.5)
    o_ref, s_ref = lightning_attention_chunked(q, k, v, g, 0.5)
    assert torch.equal(o, o_ref) and torch.equal(s, s_ref)


def test_fla_check_imports_once_and_is_a_constant_in_compiled_code(monkeypatch):
    """The first call tries the import (inside a compiled frame too); later ones, compiled or not, read the answer
    without tracing anything: a full graph with no warning (functools.cache made dynamo warn at every layer)."""
    import warnings

    imports = []
    monkeypatch.setattr(lightning, "_fla_available", None)
    monkeypatch.setattr(lightning, "_import_fla", torch.compiler.disable(lambda: imports.append(1) or False))
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any dynamo warning fails the test
        first = torch.compile(lambda x: x + 1 if lightning._fla_importable() else x - 1, backend="eager")
        assert torch.equal(first(torch.zeros(2)), -torch.ones(2))
        assert imports == [1] and lightning._fla_available is False
        later = torch.compile(lambda x: x * 2 if lightning._fla_importable() else x * 3, backend="eager",
                              fullgraph=True)
        assert torch.equal(later(torch.ones(2)), torch.full((2,), 3.0))
    assert imports == [1] and lightning._fla_importable() is False


def test_unknown_backend_is_rejected():
    q, k, v, g, _ = make_inputs(1, 2, 1, 2, 2, per_token_g=False, seed=9)
    with pytest.raises(ValueError, match="choose 'auto', 'torch' or 'fla'"):
        lightning_attention(q, k, v, g, 1.0, backend="triton")


def test_fla_inputs_share_one_dtype():
    """fla's matmuls need equal operand dtypes: mixed q/k/v (fp32 QK norms, bf16 v under autocast) are unified."""
    f32, bf16 = torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.bfloat16)
    assert lightning.kernel_input_dtype(bf16, bf16, bf16) == torch.bfloat16
    assert lightning.kernel_input_dtype(f32, f32, bf16) == torch.float32  # no autocast: promote
    assert lightning.kernel_input_dtype(f32.double(), f32.double(), f32.double()) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the autocast dtype, as for a matmul
        assert lightning.kernel_input_dtype(f32, f32, bf16) == torch.bfloat16
