"""HypeNet configuration.

This file ships inside every exported checkpoint (transformers remote code), so it imports only transformers
(and packaging, which transformers requires).
"""

import transformers
from packaging.version import Version
from transformers import PretrainedConfig

# The oldest transformers this code runs on (the same bound as hypenet's own requirement): its cache layers for
# linear attention, `transformers.initialization` and the `cache` argument of v5 models.
MIN_TRANSFORMERS = "5.24"


def check_transformers(version: str = transformers.__version__) -> None:
    """Refuse, with the fix, a transformers too old for HypeNet checkpoints (instead of a failed import later)."""
    if Version(version) < Version(MIN_TRANSFORMERS):
        raise ImportError(
            f"HypeNet checkpoints need transformers >= {MIN_TRANSFORMERS}; this environment has {version}: "
            f"pip install -U 'transformers>={MIN_TRANSFORMERS}'"
        )


check_transformers()

MIXER_TYPES = ("attention", "lightning")
# transformers' cache builds one layer cache per entry of `layer_types`; these are the names it knows.
_CACHE_LAYER_TYPE = {"attention": "full_attention", "lightning": "linear_attention"}


class HypeNetConfig(PretrainedConfig):
    """A pre-norm decoder whose token mixer is, per layer, softmax attention or a Lightning Attention RNN.

    Field names follow the teacher's config (Qwen3/Llama), so that a HypeNet built from a teacher reads like it.
    HypeNet-specific fields:
      mixer_types: one of "attention" | "lightning" per layer.
      attention_rope: RoPE in attention layers (HypeNet: off = NoPE).
      attention_qk_norm: per-head RMSNorm on q/k in attention layers (on when the teacher has it, e.g. Qwen3).
      attention_output_gate: o = attn * sigmoid(x Wg) before o_proj.
      attention_logit_scaling_base: `a` of HyPE's inference-time query scaling s_t = ln(t + a) / ln(a); None = off.
      lightning_qk_norm / lightning_output_gate / lightning_output_norm: the RNN layer's QK-norm, sigmoid output
        gate, and RMSNorm over the concatenated heads (all on in HypeNet).
      lightning_backend: "auto" (flash-linear-attention on CUDA when installed, else PyTorch), "torch" or "fla".
    """

    model_type = "hypenet"
    keys_to_ignore_at_inference = ["cache"]

    def __init__(
        self,
        vocab_size: int = 49152,
        hidden_size: int = 576,
        intermediate_size: int = 1536,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 9,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 8192,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        rope_parameters: dict | None = None,
        attention_bias: bool = False,
        attention_out_bias: bool = False,
        mlp_bias: bool = False,
        mixer_types: list[str] | None = None,
        attention_rope: bool = False,
        attention_qk_norm: bool = True,
        attention_output_gate: bool = True,
        attention_logit_scaling_base: float | None = None,
        lightning_qk_norm: bool = True,
        lightning_output_gate: bool = True,
        lightning_output_norm: bool = True,
        lightning_chunk_size: int = 64,
        lightning_backend: str = "auto",
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        **kwargs,
    ):
        kwargs.pop("layer_types", None)  # derived from mixer_types, never read back
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = hidden_size // num_attention_heads if head_dim is None else head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_parameters = dict(rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
        self.attention_bias = attention_bias
        self.attention_out_bias = attention_out_bias
        self.mlp_bias = mlp_bias
        self.mixer_types = list(mixer_types) if mixer_types is not None else ["attention"] * num_hidden_layers
        self.attention_rope = attention_rope
        self.attention_qk_norm = attention_qk_norm
        self.attention_output_gate = attention_output_gate
        self.attention_logit_scaling_base = attention_logit_scaling_base
        self.lightning_qk_norm = lightning_qk_norm
        self.lightning_output_gate = lightning_output_gate
        self.lightning_output_norm = lightning_output_norm
        self.lightning_chunk_size = lightning_chunk_size
        self.lightning_backend = lightning_backend
        self._validate_hypenet()
        self.layer_types = [_CACHE_LAYER_TYPE[m] for m in self.mixer_types]
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _validate_hypenet(self) -> None:
        if len(self.mixer_types) != self.num_hidden_layers:
            raise ValueError(
                f"mixer_types has {len(self.mixer_types)} entries but num_hidden_layers is {self.num_hidden_layers}: "
                f"give exactly one mixer per layer (expected length {self.num_hidden_layers})."
            )
        unknown = sorted({m for m in self.mixer_types if m not in MIXER_TYPES})
        if unknown:
            raise ValueError(
                f"mixer_types contains unknown mixer(s) {unknown}; expected each entry in {list(MIXER_TYPES)}."
            )
        if self.num_attention_heads <= 0 or self.num_key_value_heads <= 0 or self.head_dim <= 0:
            raise ValueError(
                "num_attention_heads, num_key_value_heads and head_dim must be positive; got "
                f"{self.num_attention_heads}, {self.num_key_value_heads}, {self.head_dim}."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads}); expected num_key_value_heads to divide {self.num_attention_heads}."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for RoPE; got head_dim={self.head_dim}.")
        if self.attention_logit_scaling_base is not None and self.attention_logit_scaling_base <= 1:
            raise ValueError(
                "attention_logit_scaling_base must be > 1 (the paper uses 500-900) or null to switch scaling off; "
                f"got {self.attention_logit_scaling_base}."
            )
        if self.lightning_backend not in ("auto", "torch", "fla"):
            raise ValueError(
                f"lightning_backend must be one of 'auto', 'torch', 'fla'; got {self.lightning_backend!r}."
            )

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, m in enumerate(self.mixer_types) if m == "attention"]


__all__ = ["HypeNetConfig", "MIXER_TYPES"]
