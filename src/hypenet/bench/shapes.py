"""Named model shapes for benchmarks (random weights): the Qwen3 teachers and the HypeNets converted from them.

A HypeNet shape is its teacher's dimensions with attention kept in the released layers (SPEC section 2.3), and the
HyPE logit-scaling base of the paper (hypenet-smollm2: the embedded teacher's dimensions, as converted on the GPU).
Timing needs no trained weights, so models are built with random weights, directly on the device in the benchmark
dtype. "tiny-*" shapes are for tests on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the shapes' names and sizes are read by the command line's parser, before torch loads)
    import torch
    from transformers import Qwen3Config

    from ..model import HypeNetConfig

_QWEN3_COMMON = dict(vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6, hidden_act="silu",
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6})

TEACHER_SHAPES = {
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, **_QWEN3_COMMON),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, **_QWEN3_COMMON),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, **_QWEN3_COMMON),
    # the embedded teacher's dimensions (SmolLM2-135M-Instruct, a Llama) in Qwen3's layout (+ QK-norm weights, 0.003%):
    # the training benchmark of the real GPU conversion (configs/gpu-smollm2.yaml) with random weights
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, hidden_act="silu",
                         rope_parameters={"rope_type": "default", "rope_theta": 1e5}),
    "tiny-qwen3": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                       max_position_embeddings=4096, rms_norm_eps=1e-6, hidden_act="silu",
                       rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
}


@dataclass(frozen=True)
class HypeNetShape:
    teacher: str
    attention_layers: tuple[int, ...]
    logit_scaling_base: float


HYPENET_SHAPES = {
    "hypenet-2b": HypeNetShape("qwen3-1.7b", (2, 3, 6, 8, 9, 21, 25), 500.0),
    "hypenet-5b": HypeNetShape("qwen3-4b", (0, 1, 7, 14, 15, 22, 24, 31, 33), 600.0),
    "hypenet-9b": HypeNetShape("qwen3-8b", (1, 2, 4, 6, 7, 10, 24, 33, 34), 900.0),
    # attention where HALO kept it in the first GPU conversion (results/gpu_convert), and the `a` its export chose
    "hypenet-smollm2": HypeNetShape("smollm2-135m", (7, 14, 16, 17, 18, 28, 29), 2000.0),
    "tiny-hypenet": HypeNetShape("tiny-qwen3", (1,), 20.0),
}

SHAPES = sorted([*HYPENET_SHAPES, *TEACHER_SHAPES])


def check_shape(name: str) -> str:
    if name not in HYPENET_SHAPES and name not in TEACHER_SHAPES:
        raise ValueError(f"unknown model shape {name!r}; named shapes: {', '.join(SHAPES)} (or pass a model path)")
    return name


def teacher_config(name: str) -> Qwen3Config:
    from transformers import Qwen3Config

    return Qwen3Config(**TEACHER_SHAPES[check_shape(name)])


def hypenet_config(name: str) -> HypeNetConfig:
    """The HypeNet of a named shape; for a teacher shape, the teacher itself as an all-attention HypeNet.

    The all-attention form (RoPE on, no output gate, no logit scaling, the teacher's QK-norm) computes exactly what
    the Qwen3 teacher computes, so the fast engine can run the teacher.
    """
    from ..teachers import hypenet_config_from_teacher

    if check_shape(name) in TEACHER_SHAPES:
        config = teacher_config(name)
        return hypenet_config_from_teacher(config, ["attention"] * config.num_hidden_layers,
                                           attention_rope=True, attention_output_gate=False)
    shape = HYPENET_SHAPES[name]
    config = teacher_config(shape.teacher)
    mixers = ["attention" if i in shape.attention_layers else "lightning" for i in range(config.num_hidden_layers)]
    return hypenet_config_from_teacher(config, mixers, attention_logit_scaling_base=shape.logit_scaling_base)


def random_model(config, device: torch.device | str, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """A causal LM of `config` (HypeNetConfig or a transformers config) with random weights, made on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..model import HypeNetConfig, HypeNetForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: no fp32 copy of a multi-GB model
    try:
        with torch.device(device):
            if isinstance(config, HypeNetConfig):
                model = HypeNetForCausalLM(config)
            else:
                model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    finally:
        torch.set_default_dtype(previous)
    # Parameters only: buffers made in fp32 on purpose (RoPE frequencies, lightning decays) stay fp32.
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model.eval()


__all__ = ["HYPENET_SHAPES", "SHAPES", "TEACHER_SHAPES", "hypenet_config", "random_model", "teacher_config"]
