"""HypeNet model: config validation, equivalence with transformers teachers, exact batched/cached inference,
the lightning layer's equations, and loading exported checkpoints through remote code."""

import math
import re
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import left_padded, run_without_hypenet
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from hypenet.model import HypeNetCache, HypeNetConfig, HypeNetForCausalLM
from hypenet.model.lightning import alibi_log_decay
from hypenet.model.modeling_hypenet import HypeNetLightningLayer
from hypenet.teachers import build_hypenet_from_teacher

TINY = dict(vocab_size=89, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=512)


def tiny_hypenet(mixers=("lightning", "attention", "lightning", "lightning"), **overrides) -> HypeNetForCausalLM:
    fields = dict(vocab_size=97, hidden_size=36, intermediate_size=64, num_hidden_layers=len(mixers),
                  num_attention_heads=9, num_key_value_heads=3, head_dim=8, mixer_types=list(mixers),
                  attention_logit_scaling_base=20.0, lightning_chunk_size=8, pad_token_id=0, eos_token_id=None)
    fields.update(overrides)
    torch.manual_seed(0)
    model = HypeNetForCausalLM(HypeNetConfig(**fields)).eval()
    with torch.no_grad():  # non-trivial norms so that every parameter matters
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    return model


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_hidden_layers=3, mixer_types=["attention"] * 2), "expected length 3"),
        (dict(num_hidden_layers=2, mixer_types=["attention", "mamba"]), "unknown mixer(s) ['mamba']"),
        (dict(num_attention_heads=6, num_key_value_heads=4), "num_key_value_heads"),
        (dict(head_dim=7), "head_dim must be even"),
        (dict(attention_logit_scaling_base=1.0), "attention_logit_scaling_base must be > 1"),
        (dict(lightning_backend="cuda"), "lightning_backend"),
    ],
)
def test_bad_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError) as err:
        HypeNetConfig(**kwargs)
    assert message in str(err.value)


def test_a_too_old_transformers_is_refused_with_the_fix():
    from hypenet.model.configuration_hypenet import MIN_TRANSFORMERS, check_transformers

    check_transformers(MIN_TRANSFORMERS)
    check_transformers("5.25.0")
    with pytest.raises(ImportError, match=r"need transformers >= 5.24; this environment has 5.10.1: pip install -U"):
        check_transformers("5.10.1")


def test_auto_classes_are_registered():
    config = AutoConfig.for_model("hypenet", num_hidden_layers=2, mixer_types=["attention", "lightning"])
    assert isinstance(config, HypeNetConfig)
    assert type(AutoModelForCausalLM.from_config(config)).__name__ == "HypeNetForCausalLM"
    assert type(AutoModel.from_config(config)).__name__ == "HypeNetModel"


# ---------------------------------------------------------------- equivalence with transformers teachers


@pytest.mark.parametrize(
    "teacher_cls, config_cls, extra",
    [
        (Qwen3ForCausalLM, Qwen3Config, dict(tie_word_embeddings=True)),
        (Qwen3ForCausalLM, Qwen3Config, dict(tie_word_embeddings=False, attention_bias=True)),
        (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=True)),
        (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=False, mlp_bias=True, attention_bias=True)),
        (Qwen2ForCausalLM, Qwen2Config, dict(tie_word_embeddings=True)),
        (MistralForCausalLM, MistralConfig, dict(tie_word_embeddings=False, sliding_window=None)),
    ],
)
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_all_attention_hypenet_reproduces_teacher(teacher_cls, config_cls, extra, attn_implementation):
    torch.manual_seed(0)
    teacher = teacher_cls(config_cls(**TINY, **extra)).eval()
    with torch.no_grad():
        for p in teacher.parameters():  # biases and norms start at 0/1: randomise so the copy is really tested
            p.add_(0.05 * torch.randn_like(p))
    student = build_hypenet_from_teacher(
        teacher, ["attention"] * 3, attention_rope=True, attention_output_gate=False
    ).eval()
    teacher.set_attn_implementation(attn_implementation)
    student.set_attn_implementation(attn_implementation)
    ids = torch.randint(0, TINY["vocab_size"], (2, 40))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    with torch.no_grad():
        for kwargs in (dict(), dict(attention_mask=mask)):
            expected, got = teacher(ids, **kwargs).logits, student(ids, **kwargs).logits
            valid = (kwargs.get("attention_mask", mask * 0 + 1)).bool()
            assert (expected - got)[valid].abs().max().item() <= 1e-5


@pytest.mark.parametrize("student_attention", ["sdpa", "eager"])  # sdpa: the eager fallback for output_attentions
@pytest.mark.parametrize("padded", [False, True])
def test_output_attentions_are_the_teachers_eager_ones(padded, student_attention):
    """An all-attention student with RoPE kept computes its teacher's attention: the probabilities it returns equal
    those of the teacher's eager attention, query by query, with and without left padding."""
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation="eager")).eval()
    student = build_hypenet_from_teacher(
        teacher, ["attention"] * 3, attention_rope=True, attention_output_gate=False
    ).eval()
    student.set_attn_implementation(student_attention)
    ids = torch.randint(1, TINY["vocab_size"], (2, 12))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :5] = 0
    with torch.no_grad():
        expected = teacher(ids, attention_mask=mask, output_attentions=True).attentions
        got = student(ids, attention_mask=mask, output_attentions=True).attentions
    assert len(got) == len(expected) == 3
    real = mask.bool()
    for want, have in zip(expected, got):
        assert have.shape == want.shape == (2, TINY["num_attention_heads"], 12, 12)
        rows = have.permute(0, 2, 1, 3)[real]  # [real queries, heads, keys]
        assert (rows - want.permute(0, 2, 1, 3)[real]).abs().max().item() <= 1e-5


def test_output_attentions_of_a_hybrid_with_a_cache_and_left_padding():
    """None in place of each lightning layer; the attention layer's rows sum to one over the real keys only, and a
    padded batch decoded through the cache gives each prompt's own probabilities."""
    model = tiny_hypenet()
    prompts = [torch.randint(1, 97, (n,)) for n in (4, 9)]
    ids, mask = left_padded(prompts)
    with torch.no_grad():
        cache = HypeNetCache(model.config)
        first = model(ids, attention_mask=mask, cache=cache, output_attentions=True).attentions
        step = torch.tensor([[3], [4]])
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        second = model(step, attention_mask=mask2, cache=cache, output_attentions=True).attentions
        assert [a is None for a in first] == [True, False, True, True] and second[1].shape == (2, 9, 1, 10)
        for b, p in enumerate(prompts):
            alone = model(torch.cat([p, step[b]])[None], output_attentions=True).attentions[1]
            n = len(p)
            assert (first[1][b, :, -n:, -n:] - alone[0, :, :n, :n]).abs().max().item() <= 1e-5
            assert (second[1][b, :, :, -n - 1:] - alone[0, :, n:, :]).abs().max().item() <= 1e-5
            assert second[1][b, :, :, :-n - 1].abs().sum().item() == 0.0  # nothing on padding
        seq = torch.randint(1, 97, (1, 12))  # a chunk of several tokens after a cache (a lower-right causal bias)
        cache = HypeNetCache(model.config)
        model(seq[:, :7], cache=cache)
        chunk = model(seq[:, 7:], cache=cache, output_attentions=True).attentions[1]
        assert (chunk - model(seq, output_attentions=True).attentions[1][:, :, 7:]).abs().max().item() <= 1e-5


def test_lightning_layers_take_teacher_kv_heads_repeated():
    torch.manual_seed(0)
    teacher = Qwen3ForCausalLM(Qwen3Config(**TINY)).eval()
    student = build_hypenet_from_teacher(teacher, ["lightning", "attention", "lightning"])
    source, target = teacher.model.layers[0].self_attn, student.model.layers[0].linear_attn
    group = TINY["num_attention_heads"] // TINY["num_key_value_heads"]
    d = TINY["head_dim"]
    for j in range(TINY["num_attention_heads"]):
        kv = j // group
        assert torch.equal(target.k_proj.weight[j * d:(j + 1) * d], source.k_proj.weight[kv * d:(kv + 1) * d])
        assert torch.equal(target.v_proj.weight[j * d:(j + 1) * d], source.v_proj.weight[kv * d:(kv + 1) * d])
    assert torch.equal(target.q_proj.weight, source.q_proj.weight)
    assert torch.equal(target.o_proj.weight, source.o_proj.weight)
    assert torch.equal(target.q_norm.weight, source.q_norm.weight)
    assert torch.equal(student.model.layers[1].self_attn.k_proj.weight, teacher.model.layers[1].self_attn.k_proj.weight)


def test_unsupported_teacher_lists_supported():
    from transformers import GPT2Config

    from hypenet.teachers import hypenet_config_from_teacher

    with pytest.raises(ValueError, match="'gpt2'.*supported: qwen3"):
        hypenet_config_from_teacher(GPT2Config())


# ---------------------------------------------------------------- the layers' equations


def test_lightning_layer_matches_spec_equations():
    """One lightning mixer against SPEC 2.1 written out token by token, in float64."""
    model = tiny_hypenet(mixers=("lightning",), attention_logit_scaling_base=None).double()
    layer = model.model.layers[0].linear_attn
    x = torch.randn(2, 11, 36, dtype=torch.float64)
    from hypenet.model.modeling_hypenet import build_mixer_context

    ctx = build_mixer_context(model.config, model.model.rotary_emb, x)
    got = layer(x, ctx)

    H, d = 9, 8
    slopes = [2 ** (-8 * h / 8) for h in range(1, 9)] + [2 ** (-8 * h / 16) for h in range(1, 17)][0::2][:1]
    gamma = torch.exp(-torch.tensor(slopes, dtype=torch.float64))
    assert torch.allclose(alibi_log_decay(9).double().exp(), gamma)

    def rope(t, pos):  # rotate pairs (i, i + d/2) by pos * theta^(-2i/d)
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        ang = pos * inv
        c, s = torch.cos(ang), torch.sin(ang)
        a, b = t[..., : d // 2], t[..., d // 2:]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)

    def rms(t, w, eps=1e-6):
        return w * t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + eps)

    expected = torch.zeros_like(got)
    for b in range(2):
        S = torch.zeros(H, d, d, dtype=torch.float64)
        for t in range(11):
            xt = x[b, t]
            q = rope(rms((xt @ layer.q_proj.weight.T).view(H, d), layer.q_norm.weight), t)
            k = rope(rms((xt @ layer.k_proj.weight.T).view(H, d), layer.k_norm.weight), t)
            v = (xt @ layer.v_proj.weight.T).view(H, d)
            S = gamma[:, None, None] * S + (k / math.sqrt(d))[:, :, None] * v[:, None, :]
            o = torch.einsum("hk,hkv->hv", q, S).reshape(H * d)
            y = rms(o, layer.o_norm.weight) * torch.sigmoid(xt @ layer.g_proj.weight.T)
            expected[b, t] = y @ layer.o_proj.weight.T
    # Not 1e-12: the rotary frequencies and decays are float32 constants (as in the teacher), the rest is float64.
    assert (got - expected).abs().max().item() < 1e-6


def test_logit_scaling_follows_log_position():
    """s_t = ln(t + a) / ln(a) at true positions (t = 0 gives 1); off when the base is None. That the right positions
    reach it under padding and caching is checked by the batched/cached tests below, which run with scaling on."""
    from hypenet.model.modeling_hypenet import build_mixer_context

    model = tiny_hypenet(mixers=("attention",), attention_logit_scaling_base=30.0)
    x = torch.randn(1, 6, 36)
    ctx = build_mixer_context(model.config, model.model.rotary_emb, x)
    t = torch.arange(6, dtype=torch.float32)
    assert torch.allclose(ctx.logit_scale[0], torch.log(t + 30.0) / math.log(30.0))
    assert ctx.logit_scale[0, 0].item() == pytest.approx(1.0)
    model.config.attention_logit_scaling_base = None
    assert build_mixer_context(model.config, model.model.rotary_emb, x).logit_scale is None


def test_rope_frequencies_and_decays_stay_fp32_when_the_model_is_cast():
    model = tiny_hypenet().to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(model.model.rotary_emb.inv_freq, tiny_hypenet().model.rotary_emb.inv_freq)
    assert model.model.layers[0].linear_attn.log_decay.dtype == torch.float32
    assert torch.equal(model.model.layers[0].linear_attn.log_decay, alibi_log_decay(9))


# ---------------------------------------------------------------- exact batched and cached inference


@pytest.mark.parametrize("mixers", [("lightning", "attention", "lightning", "lightning"), ("lightning", "lightning")])
def test_left_padded_batch_equals_each_prompt_alone(mixers):
    model = tiny_hypenet(mixers)
    torch.manual_seed(1)
    prompts = [torch.randint(1, 97, (n,)) for n in (5, 19, 12, 30)]
    ids, mask = left_padded(prompts)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
        for i, p in enumerate(prompts):
            alone = model(p[None]).logits[0]
            assert (batched[i, -len(p):] - alone).abs().max().item() <= 1e-4
            single = model.generate(p[None], max_new_tokens=8, do_sample=False, pad_token_id=0)
            assert out[i, ids.shape[1]:].tolist() == single[0, len(p):].tolist()


def test_repeated_kv_heads_give_the_same_attention_as_gqa(monkeypatch):
    """The fp32-on-CUDA path (K/V heads repeated, no enable_gqa) computes what SDPA's GQA does, padded or not."""
    import hypenet.model.modeling_hypenet as modeling

    model = tiny_hypenet(("attention", "lightning"))
    torch.manual_seed(1)
    ids, mask = left_padded([torch.randint(1, 97, (n,)) for n in (7, 16)])
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        monkeypatch.setattr(modeling, "_repeat_kv_for_sdpa", lambda q: True)
        repeated = model(ids, attention_mask=mask).logits
    assert (repeated - expected).abs().max().item() <= 1e-5


def test_chunked_prefill_and_token_by_token_decoding_equal_one_forward():
    model = tiny_hypenet()
    seq = torch.randint(1, 97, (2, 29))
    with torch.no_grad():
        full = model(seq).logits
        cache = HypeNetCache(model.config)
        parts = [model(seq[:, a:b], cache=cache, use_cache=True).logits for a, b in ((0, 5), (5, 21), (21, 29))]
        assert (torch.cat(parts, 1) - full).abs().max().item() <= 1e-5
        assert cache.get_seq_length() == 29
        cache = HypeNetCache(model.config)
        steps = [model(seq[:, t:t + 1], past_key_values=cache, use_cache=True).logits for t in range(29)]
        assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-5


def test_padded_chunked_prefill_with_cache_equals_unpadded():
    """A left-padded batch prefilled in two calls (cache passed back), then decoded, matches each prompt alone."""
    model = tiny_hypenet()
    prompts = [torch.randint(1, 97, (n,)) for n in (9, 16)]
    ids, mask = left_padded(prompts)
    with torch.no_grad():
        cache = HypeNetCache(model.config)
        first = model(ids[:, :10], attention_mask=mask[:, :10], cache=cache, use_cache=True).logits
        second = model(ids[:, 10:], attention_mask=mask, cache=cache, use_cache=True).logits
        logits = torch.cat([first, second], 1)
        for i, p in enumerate(prompts):
            assert (logits[i, -len(p):] - model(p[None]).logits[0]).abs().max().item() <= 1e-4


def test_left_padding_runs_attention_row_by_row_without_a_dense_mask():
    """Left padding (what generate() passes) builds no [B, 1, T, past + T] mask, which takes 64 GiB for 4 rows at
    128K tokens: each row attends over its own real keys, equal to the masked path, padded queries seeing only
    themselves. Right padding keeps the mask; a cache without padding takes a lower-right causal bias."""
    from torch.nn.attention.bias import CausalBias

    from hypenet.model.modeling_hypenet import _attention_by_row, build_mixer_context

    model = tiny_hypenet()
    past, new = 4, 6
    hidden = torch.randn(4, new, 36)
    # real tokens from key 2 (padding only in the cache), from 0, from 7 (3 padded queries), none
    valid = torch.tensor([[0] * 2 + [1] * 8, [1] * 10, [0] * 7 + [1] * 3, [0] * 10]).bool()
    ctx = build_mixer_context(model.config, model.model.rotary_emb, hidden, valid.long(), past_length=past)
    assert ctx.attn_mask is None and not ctx.is_causal and ctx.key_start == [2, 0, 7, 10]

    torch.manual_seed(2)
    q, k, v = torch.randn(4, 6, new, 8), torch.randn(4, 2, past + new, 8), torch.randn(4, 2, past + new, 8)
    query, key = torch.arange(past, past + new)[:, None], torch.arange(past + new)[None, :]
    allowed = ((key <= query) & valid[:, None, None, :]) | (key == query)
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=0.3, enable_gqa=True)
    by_row = _attention_by_row(q, k, v, ctx.key_start, 0.3, gqa=True)
    assert (by_row - masked).abs().max().item() <= 1e-6
    assert torch.equal(by_row[3], v[3, :, past:].repeat_interleave(3, dim=0))  # a padded query: its own value

    right = build_mixer_context(model.config, model.model.rotary_emb, hidden[:1], torch.tensor([[1] * 8 + [0] * 2]),
                                past_length=past)
    assert right.key_start is None and right.attn_mask.shape == (1, 1, new, past + new)
    cached = build_mixer_context(model.config, model.model.rotary_emb, hidden, None, past_length=past)
    assert isinstance(cached.attn_mask, CausalBias) and cached.key_start is None
    # one new token per row (decode): the small [B, 1, 1, past + 1] mask, not a loop over rows
    step = build_mixer_context(model.config, model.model.rotary_emb, hidden[:, :1], valid.long()[:, :5],
                               past_length=past)
    assert step.key_start is None and step.attn_mask.shape == (4, 1, 1, past + 1)


def test_sampling_generate_runs_and_is_seeded():
    model = tiny_hypenet()
    ids, mask = left_padded([torch.randint(1, 97, (n,)) for n in (4, 9)])
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=True, top_k=10,
                                   pad_token_id=0))
    assert runs[0].shape == (2, 14) and torch.equal(runs[0], runs[1])


def test_beam_search_with_the_cache_equals_recomputing_every_step():
    """Beam search reorders the cache (keys, values and recurrent states) as beams are chosen; without a cache every
    step recomputes the whole sequence, which is the reference. A left-padded batch of two prompts."""
    model = tiny_hypenet()
    ids, mask = left_padded([torch.randint(1, 97, (n,)) for n in (5, 8)])
    runs = [model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, num_beams=3,
                           num_return_sequences=2, pad_token_id=0, use_cache=use_cache) for use_cache in (True, False)]
    assert runs[0].shape == (4, 16) and torch.equal(runs[0], runs[1])


def test_generate_reads_past_max_position_embeddings_with_max_new_tokens():
    """max_position_embeddings is the teacher's window; generate takes it as the model's limit (README), and a
    HypeNet goes past it when told how many tokens to add: greedy tokens, each the full forward's argmax."""
    model = tiny_hypenet(max_position_embeddings=16)
    prompt = torch.randint(1, 97, (1, 40))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 45)
        for k in range(40, 45):
            assert out[0, k] == model(out[:, :k]).logits[0, -1].argmax()
    with pytest.raises(ValueError, match="max_new_tokens"):  # transformers' own refusal, as the README says
        model.generate(prompt, do_sample=False, pad_token_id=0)


def test_chunked_prefill_in_generate_equals_one_prefill():
    """generate(prefill_chunk_size=N) feeds a long prompt N tokens at a time (activation memory bounded by N): the
    tokens are those of one prefill, left-padded batch included."""
    model = tiny_hypenet()
    chunks = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: chunks.append(kwargs["input_ids"].shape[1]),
                                          with_kwargs=True)
    ids, mask = left_padded([torch.randint(1, 97, (n,)) for n in (9, 23)])
    whole = model.generate(ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    chunks.clear()
    chunked = model.generate(ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0, prefill_chunk_size=5)
    assert chunks[:5] == [5, 5, 5, 5, 3] and torch.equal(chunked, whole)


def _states(cache: HypeNetCache) -> list[torch.Tensor]:
    return [layer.recurrent_states[0] if hasattr(layer, "recurrent_states") else layer.keys for layer in cache.layers]


@pytest.mark.parametrize("window", [1024, 4])  # 4: long forwards keep only their tail, and two forwards fold
def test_recording_cache_rolls_back_to_a_cache_that_never_saw_the_tokens(monkeypatch, window):
    """Assisted decoding verifies drafted tokens and crops the rejected ones: after crop(-n) every layer (keys and
    values, recurrent states) and the next logits match a cache fed only the kept tokens."""
    monkeypatch.setattr(HypeNetLightningLayer, "MIN_ROLLBACK", window)
    model = tiny_hypenet()
    seq = torch.randint(1, 97, (1, 25))
    with torch.no_grad():
        # (forwards as token ranges, tokens removed); [(0, 2), (2, 20)]: a long forward after a short one
        cases = [([(0, 24)], 0), ([(0, 24)], 3), ([(0, 20), (20, 22), (22, 24)], 4), ([(0, 2), (2, 20)], 3),
                 ([(0, 3)], 3)]
        for forwards, remove in cases:
            cache = HypeNetCache(model.config)
            cache.activate_past_recording(recurrent_states_to_keep=2)
            for a, b in forwards:
                model(seq[:, a:b], cache=cache, use_cache=True)
            cache.crop(-remove)
            kept = forwards[-1][1] - remove
            reference = HypeNetCache(model.config)
            if kept:
                model(seq[:, :kept], cache=reference, use_cache=True)
            assert cache.get_seq_length() == kept
            for got, want in zip(_states(cache), _states(reference)):
                if want is None:  # nothing kept: no keys, a zero state
                    assert got.numel() == 0 or not got.any()
                else:
                    assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-5
            nxt = seq[:, kept:kept + 1]
            assert (model(nxt, cache=cache).logits - model(nxt, cache=reference).logits).abs().max().item() <= 1e-5


def test_rollback_past_what_was_kept_is_refused(monkeypatch):
    monkeypatch.setattr(HypeNetLightningLayer, "MIN_ROLLBACK", 4)
    model = tiny_hypenet()
    with torch.no_grad():
        cache = HypeNetCache(model.config)
        model(torch.randint(1, 97, (1, 9)), cache=cache, use_cache=True)
        with pytest.raises(RuntimeError, match="the cache is not recording; call cache.activate_past_recording"):
            cache.crop(-2)
        cache = HypeNetCache(model.config)
        cache.activate_past_recording(recurrent_states_to_keep=2)
        model(torch.randint(1, 97, (1, 9)), cache=cache, use_cache=True)
        with pytest.raises(RuntimeError, match="only the last 4 tokens were kept"):
            cache.crop(-5)
        cache.reset()
        with pytest.raises(RuntimeError, match="only the last 0 tokens were kept"):  # a reset forgets them too
            cache.crop(-1)
        plain = DynamicCache(config=model.config)  # transformers' own linear-attention layers, recording:
        plain.activate_past_recording()  # it becomes a HypeNetCache that records, so it rolls back
        model(torch.randint(1, 97, (1, 9)), cache=plain, use_cache=True)
        assert isinstance(plain, HypeNetCache) and plain.get_seq_length() == 9
        plain.crop(-2)
        assert plain.get_seq_length() == 7


ON_GPU = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                     reason="flash-linear-attention's kernels run on a GPU"))


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
def test_assisted_and_prompt_lookup_decoding_equal_greedy(monkeypatch, device):
    """Speculative decoding through generate(): drafts rejected part-way roll the cache back, and the tokens are
    greedy's. The assistant is a HypeNet too, so its own cache rolls back as well. On a GPU the same goes through
    flash-linear-attention's kernels, in fp32: drafts are verified by the chunked kernel, greedy steps by the
    recurrent one, and rejected drafts are replayed out of the state by fla too. (In bf16 a near tie may round the
    other way, as it does for the teacher: scripts/assisted_check.py reports the margin.)"""
    removed = []
    crop = HypeNetLightningLayer.crop
    monkeypatch.setattr(HypeNetLightningLayer, "crop", lambda self, n: removed.append(-n) or crop(self, n))
    fla = dict(head_dim=16, lightning_backend="fla") if device == "cuda" else {}
    model = tiny_hypenet(**fla).to(device)
    torch.manual_seed(1)
    pattern = torch.randint(1, 97, (1, 6))
    ids = torch.cat([pattern, torch.randint(1, 97, (1, 5)), pattern, pattern[:, :3]], 1).to(device)  # n-grams
    greedy = model.generate(ids, max_new_tokens=20, min_new_tokens=20, pad_token_id=0)
    assistant = tiny_hypenet(mixers=("lightning", "lightning", "attention"), **fla).to(device)
    for extra in (dict(prompt_lookup_num_tokens=4), dict(assistant_model=assistant)):
        removed.clear()
        out = model.generate(ids, max_new_tokens=20, min_new_tokens=20, pad_token_id=0, **extra)
        assert torch.equal(out, greedy), extra
        assert any(n > 0 for n in removed), f"no draft was rejected with {extra}: the test did not roll back"


def test_static_cache_and_continuous_batching_are_explained():
    model = tiny_hypenet()
    ids = torch.randint(1, 97, (2, 7))
    for implementation in ("static", "offloaded"):
        with pytest.raises(ValueError, match=f"cache_implementation='{implementation}' is not supported.*hypenet gen"):
            model.generate(ids, max_new_tokens=6, pad_token_id=0, cache_implementation=implementation)
    with pytest.raises(NotImplementedError, match="continuous batching .* Use generate"):
        model.generate_batch([[5, 6, 7], [8, 9]])


def test_mask_length_mismatch_is_explained():
    model = tiny_hypenet()
    with pytest.raises(ValueError, match="expected attention_mask.shape"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3, dtype=torch.long))


# ---------------------------------------------------------------- attn_implementation: sdpa and eager


@pytest.fixture
def sdpa_calls(monkeypatch):
    """The number of torch scaled_dot_product_attention calls made so far (a list of one count)."""
    calls, sdpa = [0], F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls[0] += 1
        # the original in place during the call: a causal bias mask dispatches only when it is the function called
        F.scaled_dot_product_attention = sdpa
        try:
            return sdpa(*args, **kwargs)
        finally:
            F.scaled_dot_product_attention = counted

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    return calls


def run_all_attention_paths(model) -> list[torch.Tensor]:
    """Logits through every way the attention layers are called: no mask, left padding (row by row), a hole in the
    mask (a dense mask), a chunk after a cache (lower-right causal), decode steps with and without padding."""
    torch.manual_seed(3)
    ids, left = left_padded([torch.randint(1, 97, (n,)) for n in (6, 13)])
    hole = torch.ones_like(ids)
    hole[1, 4:6] = 0
    out = [model(ids).logits, model(ids, attention_mask=left).logits, model(ids, attention_mask=hole).logits]
    cache = HypeNetCache(model.config)
    out.append(model(ids[:, :7], cache=cache).logits)
    out.append(model(ids[:, 7:], cache=cache).logits)  # several new tokens after a cache
    out.append(model(torch.tensor([[5], [6]]), cache=cache).logits)  # decode, no padding
    cache, mask = HypeNetCache(model.config), left
    out.append(model(ids, attention_mask=mask, cache=cache).logits)
    for token in (7, 8):  # decode after a left-padded prefill
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        out.append(model(torch.full((2, 1), token), attention_mask=mask, cache=cache).logits)
    return out


@pytest.mark.parametrize("overrides", [dict(), dict(attention_logit_scaling_base=None), dict(attention_rope=True),
                                       dict(attention_qk_norm=False, attention_output_gate=False)])
def test_eager_attention_computes_what_sdpa_does(sdpa_calls, overrides):
    """attn_implementation="eager" runs matmul + softmax (transformers' eager_attention_forward, no SDPA call) and
    gives sdpa's logits with padding, a cache and decoding, with and without logit scaling, RoPE, QK-norm and the
    output gate. Before, "eager" was recorded and SDPA ran anyway."""
    model = tiny_hypenet(("attention", "lightning", "attention", "lightning"), **overrides)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        expected = run_all_attention_paths(model)
        assert sdpa_calls[0] > 0
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager" and model.model.config._attn_implementation == "eager"
        sdpa_calls[0] = 0
        got = run_all_attention_paths(model)
    assert sdpa_calls[0] == 0
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5)
    ids, mask = left_padded([torch.randint(1, 97, (n,)) for n in (5, 11)])
    eager = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    model.set_attn_implementation("sdpa")
    assert torch.equal(eager, model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False))


def test_output_attentions_under_eager_and_the_sdpa_fallback(sdpa_calls):
    """Eager returns each attention layer's probabilities (None for a lightning layer): rows sum to one, nothing on
    padding or future keys. sdpa cannot return them: it runs the eager path for that call, with a warning, as
    transformers' models did before v5 (v5's sdpa warns and returns None)."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging as hf_logging

    import hypenet.model.modeling_hypenet as modeling

    model = tiny_hypenet(("lightning", "attention", "lightning", "attention"))
    ids, mask = left_padded([torch.randint(1, 97, (n,)) for n in (4, 9)])
    with torch.no_grad():
        plain = model(ids, attention_mask=mask)
        hf_logging.get_logger("").warning_once.cache_clear()  # warning_once: once per process
        with CaptureLogger(modeling.logger) as log:
            fallback = model(ids, attention_mask=mask, output_attentions=True)
        assert "attn_implementation='sdpa' cannot return attention weights" in log.out
        model.set_attn_implementation("eager")
        sdpa_calls[0] = 0
        with CaptureLogger(modeling.logger) as log:
            eager = model(ids, attention_mask=mask, output_attentions=True)
        assert log.out == "" and sdpa_calls[0] == 0
    torch.testing.assert_close(eager.logits, plain.logits, atol=1e-5, rtol=1e-5)
    assert [a is None for a in eager.attentions] == [True, False, True, False]
    causal = torch.ones(9, 9).tril().bool()
    for weights, same in zip(eager.attentions[1::2], fallback.attentions[1::2]):
        assert weights.shape == (2, 9, 9, 9) and torch.equal(weights, same)
        real = weights[mask.bool()]  # [real queries, heads, keys]
        torch.testing.assert_close(real.sum(-1), torch.ones_like(real.sum(-1)))
        assert weights[0, :, 5:, :5].abs().sum().item() == 0.0  # row 0's padding
        assert weights[:, :, ~causal].abs().sum().item() == 0.0


@pytest.mark.parametrize("name", ["flash_attention_2", "flex_attention", "paged|eager", "made_up"])
def test_an_unsupported_attn_implementation_is_refused_with_what_hypenet_runs(name):
    """Refused when the model is made and by set_attn_implementation, naming sdpa and eager (transformers accepted
    any registered name, e.g. "paged|eager", and listed it as possible); set on the config directly, the forward
    refuses it."""
    message = rf"HypeNet does not support attn_implementation='{re.escape(name)}'.*'sdpa'.*or 'eager'"
    config = tiny_hypenet().config
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_config(config, attn_implementation=name)
    model = tiny_hypenet()
    with pytest.raises(ValueError, match=message):
        model.set_attn_implementation(name)
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = name
    with pytest.raises(ValueError, match=message), torch.no_grad():
        model(torch.randint(1, 97, (1, 5)))


# ---------------------------------------------------------------- export through remote code


def test_checkpoint_loads_with_only_torch_and_transformers(tmp_path):
    model = tiny_hypenet()
    model.save_pretrained(tmp_path / "ckpt")
    prompt = torch.randint(1, 97, (1, 7))
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)[0].tolist()
    script = textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        out = model.generate(torch.tensor({prompt.tolist()}), max_new_tokens=6, do_sample=False, pad_token_id=0)
        looked_up = model.generate(torch.tensor({prompt.tolist()}), max_new_tokens=6, do_sample=False, pad_token_id=0,
                                   prompt_lookup_num_tokens=2)
        assert torch.equal(out, looked_up), (out, looked_up)
        print(out[0].tolist())
    """)
    result = run_without_hypenet(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(expected)


def test_the_tokenizer_loads_with_trust_remote_code_and_without_it_only_after_a_question(tmp_path):
    """transformers 5 reads a folder's model config before its tokenizer's, so AutoTokenizer meets HypeNet's config
    code: with trust_remote_code=True it loads silently (as the README's example has it); without, transformers asks
    whether to run that code (unanswered here: stdin is closed) and then loads the same tokenizer."""
    from test_eval_tiny import tiny_tokenizer

    tiny_hypenet().save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    text = "The capital of France is"
    expected = tiny_tokenizer()(text)["input_ids"]
    script = textwrap.dedent(f"""
        from transformers import AutoTokenizer
        trusted = AutoTokenizer.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        print("trusted", trusted({text!r})["input_ids"], flush=True)
        asked = AutoTokenizer.from_pretrained({str(tmp_path / 'ckpt')!r})
        print("asked", asked({text!r})["input_ids"], flush=True)
    """)
    result = run_without_hypenet(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout  # (the question, unanswered, ends without a line break: the next print follows it)
    loaded = re.findall(r"(trusted|asked) (\[[\d, ]*\])", out)
    assert loaded == [("trusted", str(expected)), ("asked", str(expected))], out
    question = "Do you wish to run the custom code?"
    assert out.count(question) == 1, out[-3000:]
    assert out.index("trusted") < out.index(question) < out.index("asked"), out[-3000:]


def test_a_checkpoint_loaded_with_attn_implementation_eager_runs_eager(tmp_path):
    """from_pretrained(..., trust_remote_code=True, attn_implementation="eager"): the checkpoint's own code runs
    matmul + softmax (no SDPA call), sdpa's logits, and output_attentions returns the attention layer's weights;
    set_attn_implementation switches back. Before, "eager" was recorded and SDPA ran anyway."""
    model = tiny_hypenet(("lightning", "attention"))
    model.save_pretrained(tmp_path / "ckpt")
    script = textwrap.dedent(f"""
        import torch
        import torch.nn.functional as F
        from transformers import AutoModelForCausalLM
        calls, sdpa = [], F.scaled_dot_product_attention
        F.scaled_dot_product_attention = lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs)
        path, ids = {str(tmp_path / 'ckpt')!r}, torch.randint(1, 97, (2, 9))
        default = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="eager").eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert model.config._attn_implementation == "eager"
        with torch.no_grad():
            expected = default(ids).logits
            assert len(calls) == 1, calls
            out = model(ids, output_attentions=True)
            assert len(calls) == 1, calls
            torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
            assert out.attentions[0] is None and out.attentions[1].shape == (2, 9, 9, 9)
            model.set_attn_implementation("sdpa")
            torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
            assert len(calls) == 2, calls
        print("ok")
    """)
    result = run_without_hypenet(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"


# ---------------------------------------------------------------- as any transformers model


@pytest.mark.parametrize("mixers", [("lightning", "attention", "lightning"), ("attention", "lightning")])
@pytest.mark.parametrize("make", ["DynamicCache()", "DynamicCache(config=model.config)"])
def test_a_dynamic_cache_made_by_the_caller_is_used_and_filled_in_place(mixers, make):
    """A cache made as for any transformers model holds what HypeNet's forward and generate() add to it. Before, a
    DynamicCache(config=...) took the states but counted no tokens when the first layer is a lightning layer (the
    next tokens got positions from 0: logits 0.49 off), generate() swapped a caller's cache for a new one (the
    prefix computed again, the caller's object left as it was) and DynamicCache() failed."""
    model = tiny_hypenet(mixers=mixers)
    ids = torch.randint(1, 97, (1, 12))
    with torch.no_grad():
        full = model(ids).logits
        cache = eval(make, {"DynamicCache": DynamicCache, "model": model})
        model(ids[:, :9], past_key_values=cache)
        assert cache.get_seq_length() == 9
        torch.testing.assert_close(model(ids[:, 9:], past_key_values=cache).logits, full[:, 9:])
    greedy = model.generate(ids, max_new_tokens=5, do_sample=False)
    prefilled = []
    for scale in (1.0, 50.0):  # the prefix's states as computed, then made up: generate() reads them
        cache = eval(make, {"DynamicCache": DynamicCache, "model": model})
        with torch.no_grad():
            model(ids[:, :9], cache=cache)  # (`cache`, transformers' name since 5.24; `past_key_values` above)
        for layer in cache.layers:
            if isinstance(layer, HypeNetLightningLayer):
                layer.recurrent_states[0].mul_(scale)
        prefilled.append(model.generate(ids, cache=cache, max_new_tokens=5, do_sample=False))
        assert cache.get_seq_length() == 12 + 5 - 1  # the caller's cache, filled by generate()
    assert torch.equal(prefilled[0], greedy) and not torch.equal(prefilled[1], greedy)


def test_a_cache_that_cannot_hold_hypenets_states_is_refused():
    model = tiny_hypenet()
    teacher = Qwen3ForCausalLM(Qwen3Config(**TINY)).eval()
    ids = torch.randint(1, 89, (1, 6))
    used = DynamicCache()
    with torch.no_grad():
        teacher(ids, past_key_values=used)
        with pytest.raises(ValueError, match=r"already holds tokens of another model .* pass a new DynamicCache\(\)"):
            model(ids, past_key_values=used)
        with pytest.raises(ValueError, match=r"in its own cache, which EncoderDecoderCache cannot be: pass"):
            from transformers import EncoderDecoderCache

            model(ids, past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()))


def test_return_dict_false_and_the_configs_output_defaults_are_honoured():
    """`loss, logits = model(..., return_dict=False)` unpacks tensors, as for the teacher (it unpacked the output's
    keys, 'loss' and 'logits'); config.output_hidden_states and config.return_dict are the defaults."""
    model = tiny_hypenet()
    ids = torch.randint(1, 97, (2, 7))
    with torch.no_grad():
        out = model(ids, labels=ids, use_cache=False)
        loss, logits = model(ids, labels=ids, use_cache=False, return_dict=False)
        assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)
        (hidden,) = model.model(ids, use_cache=False, return_dict=False)
        assert torch.equal(hidden, model.model(ids, use_cache=False).last_hidden_state)
        model.config.output_hidden_states = True  # (config.output_attentions needs attn_implementation "eager")
        assert len(model(ids, use_cache=False).hidden_states) == 5
        model.config.return_dict = False
        assert isinstance(model(ids, use_cache=False), tuple)


def test_compiled_fullgraph_with_a_padding_mask_equals_eager():
    """torch.compile(fullgraph=True) with an attention_mask: the mask's shortcuts read its values, which a graph
    cannot branch on ("Could not guard on data-dependent expression"); compiled, the mask takes the general path."""
    model = tiny_hypenet()
    ids = torch.randint(1, 97, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        for m in (mask, torch.ones_like(ids)):
            torch.testing.assert_close(compiled(ids, attention_mask=m, use_cache=False).logits,
                                       model(ids, attention_mask=m, use_cache=False).logits)
