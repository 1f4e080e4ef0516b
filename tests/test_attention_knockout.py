"""scripts/attention_knockout.py: the teacher's attention cut to a window in the chosen layers only."""


import torch
import torch.nn.functional as F
from conftest import load_script

knockout = load_script("attention_knockout")


def test_window_applies_to_the_other_layers_only():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with knockout.windowed_attention({1}, num_layers=2, window=1):
        layer0 = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # windowed: each query sees itself only
        layer1 = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # kept
        layer0_again = F.scaled_dot_product_attention(q[:, :, -1:], k, v)  # next forward, a decode step
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"
    assert torch.allclose(layer0, v, atol=1e-6) and torch.allclose(layer0_again, v[:, :, -1:], atol=1e-6)
    assert torch.equal(layer1, full)
    with knockout.windowed_attention(set(), num_layers=1, window=6):  # a window as long as the prompt: no change
        assert torch.allclose(F.scaled_dot_product_attention(q, k, v, is_causal=True), full, atol=1e-6)
    with knockout.windowed_attention(set(), num_layers=1, window=3):  # with a padding mask: both apply
        padded = torch.ones(6, dtype=torch.bool)
        padded[0] = False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=padded)
    p = torch.softmax((q[:, :, 5:6] @ k[:, :, 3:6].transpose(-1, -2)) / 8**0.5, -1)  # the last 3 keys
    assert torch.allclose(out[:, :, 5], (p @ v[:, :, 3:6])[:, :, 0], atol=1e-6)
    assert torch.allclose(out[:, :, 1], v[:, :, 1], atol=1e-6)  # key 0 is padding: query 1 sees only itself
