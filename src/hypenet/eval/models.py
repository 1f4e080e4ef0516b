"""Load any causal LM for evaluation (a local HF dir, a GGUF file, or the embedded teacher) and size its caches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hypenet.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

# torch's dtype of each name (torch loads with a model, not with the command line's parser, which reads these names)
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
           "fp16": "float16"}
DTYPE_NAMES = ("auto", *_DTYPES)  # what --dtype accepts


def resolve_device(device: str | None) -> torch.device:
    """The device asked for (None: CUDA when a GPU is visible, else the CPU); a CUDA device without a GPU is refused."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise InvalidInputError(f"--device {device!r} is not a device torch knows ({error}); e.g. cpu, cuda, cuda:1")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"--device {device} but no GPU is visible to torch (torch.cuda.is_available() is "
                                "False): pass --device cpu, or install torch's CUDA build on a machine with a GPU")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU unless asked otherwise."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'.")
    return getattr(torch, _DTYPES[dtype])


def is_hypenet(config) -> bool:
    return getattr(config, "model_type", None) == "hypenet"


def trained_context_length(config) -> int:
    """The context length the model was trained at: YaRN's original length if already scaled, else max positions."""
    rope = getattr(config, "rope_parameters", None) or {}
    return int(rope.get("original_max_position_embeddings") or config.max_position_embeddings)


def yarn_rope_scaling(trained_len: int, target_len: int) -> dict | None:
    """YaRN parameters that stretch RoPE from the trained length to `target_len`; None when no stretch is needed."""
    if target_len <= trained_len:
        return None
    return {"rope_type": "yarn", "factor": target_len / trained_len, "original_max_position_embeddings": trained_len}


def apply_rope_scaling(config, rope_scaling: dict) -> None:
    """Merge `rope_scaling` into transformers 5's `config.rope_parameters` (keeping rope_theta) and widen the window."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope.update(rope_scaling)
    config.rope_parameters = rope
    if "factor" in rope and "original_max_position_embeddings" in rope:
        config.max_position_embeddings = int(round(rope["factor"] * rope["original_max_position_embeddings"]))


def set_logit_scaling_base(config, base: float | str) -> None:
    """Replace a HypeNet config's HyPE logit-scaling base `a` (queries scaled by ln(t + a) / ln(a) at position t), an
    inference-time setting the export chose by held-out loss; "off" switches the scaling off."""
    if not is_hypenet(config):
        raise ValueError("a logit-scaling base is HyPE's setting of a HypeNet model's attention layers; this model is "
                         f"a {getattr(config, 'model_type', 'non-HypeNet')} model: evaluate it without one.")
    if base != "off" and not (isinstance(base, (int, float)) and base > 1):
        raise ValueError(f"the logit-scaling base must be a number > 1 (the paper uses 500-900) or 'off'; got {base!r}")
    config.attention_logit_scaling_base = None if base == "off" else float(base)


def load_model_for_eval(spec: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
                        rope_scaling: dict | None = None, logit_scaling_base: float | str | None = None):
    """(model, tokenizer) in eval mode; the tokenizer pads on the left (batched generation) and has a pad token.

    rope_scaling (e.g. from `yarn_rope_scaling`) is applied to the config before the weights load. A HypeNet
    checkpoint has no RoPE in its attention layers, so it is evaluated as-is and rope_scaling must be None.
    logit_scaling_base (a HypeNet model only; a number > 1, or "off") replaces the checkpoint's own base; None keeps it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from hypenet.teachers.load import checkpoint_location, load_tokenizer

    directory = checkpoint_location(spec)  # 'teacher' is the embedded model; a GGUF file is dequantised once
    location = {"trust_remote_code": True}
    config = AutoConfig.from_pretrained(directory, **location)
    if rope_scaling is not None:
        if is_hypenet(config):
            raise ValueError("a HypeNet model has no RoPE in its attention layers to scale: evaluate it without YaRN.")
        apply_rope_scaling(config, rope_scaling)
    if logit_scaling_base is not None:
        set_logit_scaling_base(config, logit_scaling_base)
    torch_device = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=resolve_dtype(dtype, torch_device),
                                                 **location)
    model.to(torch_device).eval()
    tokenizer = load_tokenizer(directory, **location)
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def prepare_tokenizer(tokenizer):
    """Left padding, so that every prompt of a batch ends where generation starts; EOS doubles as pad if needed."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings count once)."""
    return sum(p.numel() for p in model.parameters())


def attention_layer_count(config) -> int:
    if is_hypenet(config):
        return sum(1 for m in config.mixer_types if m == "attention")
    return config.num_hidden_layers


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_cache_bytes_per_token(config, bytes_per_element: int = 2) -> int:
    """Bytes the KV cache grows by per token (bf16 by default): attention layers x (K and V) x kv heads x head dim."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return attention_layer_count(config) * 2 * kv_heads * head_dim(config) * bytes_per_element


def recurrent_state_bytes(config, bytes_per_element: int = 4) -> int:
    """Constant per-sequence state of HypeNet's Lightning layers: heads x d x d, fp32 (0 for a pure Transformer)."""
    if not is_hypenet(config):
        return 0
    lightning_layers = sum(1 for m in config.mixer_types if m == "lightning")
    d = head_dim(config)
    return lightning_layers * config.num_attention_heads * d * d * bytes_per_element


def model_footprint(model) -> dict:
    config = model.config
    return {
        "model_type": config.model_type,
        "parameters": count_parameters(model),
        "layers": config.num_hidden_layers,
        "attention_layers": attention_layer_count(config),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config),
        "recurrent_state_bytes": recurrent_state_bytes(config),
        "trained_context_length": trained_context_length(config),
        **({"logit_scaling_base": config.attention_logit_scaling_base or "off"} if is_hypenet(config) else {}),
    }

