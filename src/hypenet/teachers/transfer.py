"""Weight transfer: a HypeNet built from a pretrained teacher (HALO's first step, SPEC section 3).

Parameter names are the teacher's, so transfer is a copy: `self_attn.*` goes to an attention layer's `self_attn.*`
or a lightning layer's `linear_attn.*`. The only reshaping is GQA -> MHA for lightning layers, whose head j takes
the teacher's KV head floor(j / group). Parameters the teacher has no counterpart for (output gates, the lightning
output norm, QK-norms of teachers without them) keep their initialisation.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from ..model import HypeNetConfig, HypeNetForCausalLM
from ..model.modeling_hypenet import HypeNetAttention, HypeNetLightningAttention
from .load import check_supported

# HypeNet parameters that a teacher may not provide (all others must be copied): output gates, the lightning
# output norm, and QK-norms of teachers without them (they start at ones).
NEW_PARAMETER_SUFFIXES = ("g_proj.weight", "o_norm.weight", "q_norm.weight", "k_norm.weight")


def teacher_attention(teacher: PreTrainedModel, layer_idx: int) -> nn.Module:
    return teacher.model.layers[layer_idx].self_attn


def sliding_window(teacher_config) -> int | None:
    """The window a teacher's attention is limited to (Mistral's `sliding_window`; Qwen2's and Qwen3's when
    `use_sliding_window` is on), or None. HypeNet's attention layers attend to the whole sequence."""
    window = getattr(teacher_config, "sliding_window", None)
    if not window or not getattr(teacher_config, "use_sliding_window", True):
        return None
    return int(window) if int(window) < teacher_config.max_position_embeddings else None


def hypenet_config_from_teacher(teacher_config, mixer_types: list[str] | None = None, **overrides) -> HypeNetConfig:
    """A HypeNetConfig with the teacher's dimensions, norms, rotary settings and token ids.

    mixer_types defaults to all lightning. Attention layers keep the teacher's QK-norm when it has one;
    biases follow the teacher's projections (Qwen2 has q/k/v biases, Llama's `attention_bias` covers o_proj too).
    """
    check_supported(teacher_config.model_type, getattr(teacher_config, "name_or_path", "") or "teacher config")
    model_type = teacher_config.model_type
    heads = teacher_config.num_attention_heads
    head_dim = getattr(teacher_config, "head_dim", None) or teacher_config.hidden_size // heads
    qkv_bias = model_type == "qwen2" or bool(getattr(teacher_config, "attention_bias", False))
    out_bias = model_type != "qwen2" and bool(getattr(teacher_config, "attention_bias", False))
    layers = teacher_config.num_hidden_layers
    fields = dict(
        vocab_size=teacher_config.vocab_size,
        hidden_size=teacher_config.hidden_size,
        intermediate_size=teacher_config.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=getattr(teacher_config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        hidden_act=teacher_config.hidden_act,
        max_position_embeddings=teacher_config.max_position_embeddings,
        rms_norm_eps=teacher_config.rms_norm_eps,
        rope_parameters=dict(teacher_config.rope_parameters),
        tie_word_embeddings=bool(getattr(teacher_config, "tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        attention_out_bias=out_bias,
        mlp_bias=bool(getattr(teacher_config, "mlp_bias", False)),
        attention_qk_norm=model_type == "qwen3",
        mixer_types=list(mixer_types) if mixer_types is not None else ["lightning"] * layers,
        pad_token_id=teacher_config.pad_token_id,
        bos_token_id=teacher_config.bos_token_id,
        eos_token_id=teacher_config.eos_token_id,
    )
    fields.update(overrides)
    return HypeNetConfig(**fields)


def _expand_kv_heads(weight: torch.Tensor, num_kv_heads: int, num_heads: int) -> torch.Tensor:
    """[kv_heads * d, ...] -> [heads * d, ...]: query head j takes KV head floor(j / group)."""
    grouped = weight.reshape(num_kv_heads, -1, *weight.shape[1:])
    return grouped.repeat_interleave(num_heads // num_kv_heads, dim=0).reshape(-1, *weight.shape[1:])


@torch.no_grad()
def copy_attention_weights(source: nn.Module, target: nn.Module, num_kv_heads: int, num_heads: int) -> list[str]:
    """Copy a teacher attention module into a HypeNet mixer (attention or lightning); return names left at init."""
    source_params = dict(source.named_parameters())
    left = []
    for name, param in target.named_parameters():
        if name not in source_params:
            left.append(name)
            continue
        value = source_params[name]
        if name.startswith(("k_proj", "v_proj")) and value.shape != param.shape:
            value = _expand_kv_heads(value, num_kv_heads, num_heads)
        if value.shape != param.shape:
            raise ValueError(f"cannot copy teacher {name} of shape {tuple(value.shape)} into {tuple(param.shape)}")
        param.copy_(value)
    return left


@torch.no_grad()
def _mixer_from_teacher(mixer_class, gated: bool, teacher: PreTrainedModel, layer_idx: int, config: HypeNetConfig):
    source = teacher_attention(teacher, layer_idx)
    param = next(source.parameters())
    layer = mixer_class(config, layer_idx).to(device=param.device, dtype=param.dtype)
    if gated:
        nn.init.normal_(layer.g_proj.weight, std=config.initializer_range)  # as HypeNetForCausalLM initialises it
    copy_attention_weights(source, layer, config.num_key_value_heads, config.num_attention_heads)
    return layer


def lightning_from_teacher(teacher: PreTrainedModel, layer_idx: int,
                           config: HypeNetConfig) -> HypeNetLightningAttention:
    """A lightning layer initialised from the teacher's attention in `layer_idx` (HALO stage 1's student)."""
    return _mixer_from_teacher(HypeNetLightningAttention, config.lightning_output_gate, teacher, layer_idx, config)


def attention_from_teacher(teacher: PreTrainedModel, layer_idx: int, config: HypeNetConfig) -> HypeNetAttention:
    """HypeNet's attention initialised from the teacher's attention in `layer_idx`: what stage 2 keeps in a selected
    layer (the optional stage-1 attention student, Stage1Config.align_attention)."""
    return _mixer_from_teacher(HypeNetAttention, config.attention_output_gate, teacher, layer_idx, config)


@torch.no_grad()
def build_hypenet_from_teacher(
    teacher: PreTrainedModel,
    mixer_types: list[str] | None = None,
    lightning_layers: dict[int, nn.Module] | None = None,
    attention_layers: dict[int, nn.Module] | None = None,
    **config_overrides,
) -> HypeNetForCausalLM:
    """A HypeNetForCausalLM with the teacher's weights (HALO weight transfer).

    lightning_layers: trained lightning modules (stage 1) to use instead of fresh copies, by layer index;
    attention_layers: the same for attention layers (stage 1 with align_attention).
    """
    config = hypenet_config_from_teacher(teacher.config, mixer_types, **config_overrides)
    param = next(teacher.parameters())
    student = HypeNetForCausalLM(config).to(device=param.device, dtype=param.dtype)
    teacher_params = dict(teacher.named_parameters())
    left_at_init = []
    for i, layer in enumerate(student.model.layers):
        mixer_prefix = "self_attn" if layer.mixer_type == "attention" else "linear_attn"
        trained = lightning_layers if layer.mixer_type == "lightning" else attention_layers
        if trained and i in trained:
            layer.mixer.load_state_dict(trained[i].state_dict())
        else:
            left = copy_attention_weights(
                teacher_attention(teacher, i), layer.mixer, config.num_key_value_heads, config.num_attention_heads
            )
            left_at_init += [f"model.layers.{i}.{mixer_prefix}.{n}" for n in left]
        for name, p in layer.named_parameters():
            if not name.startswith(("self_attn.", "linear_attn.")):
                p.copy_(teacher_params[f"model.layers.{i}.{name}"])
    student.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight)
    student.model.norm.weight.copy_(teacher.model.norm.weight)
    if not config.tie_word_embeddings:
        student.lm_head.weight.copy_(teacher.lm_head.weight)
    unexpected = [n for n in left_at_init if not n.endswith(NEW_PARAMETER_SUFFIXES)]
    if unexpected:
        raise ValueError(f"the teacher has no weights for {unexpected}; is it a supported architecture?")
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = teacher.generation_config
    return student
