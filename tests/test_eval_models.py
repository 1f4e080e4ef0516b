"""Eval model loading (local dir, YaRN) and cache sizes."""

import pytest
import torch
from test_eval_tiny import tiny_hypenet, tiny_llama, tiny_tokenizer
from transformers import LlamaConfig

from hypenet.eval.models import (
    apply_rope_scaling,
    kv_cache_bytes_per_token,
    load_model_for_eval,
    model_footprint,
    recurrent_state_bytes,
    trained_context_length,
    yarn_rope_scaling,
)
from hypenet.model.configuration_hypenet import HypeNetConfig


def qwen3_1p7b_like(**extra):
    return dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                **extra)


def test_kv_cache_bytes_match_the_paper():
    # SPEC 2.3: Qwen3-1.7B 112 KB/token in bf16, HypeNet-2B (7 attention layers of 28) 28 KB.
    teacher = LlamaConfig(**qwen3_1p7b_like())
    assert kv_cache_bytes_per_token(teacher) == 28 * 2 * 8 * 128 * 2 == 114688
    assert recurrent_state_bytes(teacher) == 0
    mixers = ["lightning"] * 28
    for i in (2, 3, 6, 8, 9, 21, 25):
        mixers[i] = "attention"
    student = HypeNetConfig(**qwen3_1p7b_like(mixer_types=mixers))
    assert kv_cache_bytes_per_token(student) == 7 * 2 * 8 * 128 * 2 == 114688 // 4
    assert recurrent_state_bytes(student) == 21 * 16 * 128 * 128 * 4


def test_yarn_scaling_only_beyond_the_trained_window():
    assert yarn_rope_scaling(8192, 8192) is None
    assert yarn_rope_scaling(8192, 32768) == {"rope_type": "yarn", "factor": 4.0,
                                              "original_max_position_embeddings": 8192}


def test_apply_rope_scaling_keeps_theta_and_widens_the_window():
    config = LlamaConfig(max_position_embeddings=2048, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    apply_rope_scaling(config, yarn_rope_scaling(2048, 8192))
    assert config.rope_parameters == {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
                                      "original_max_position_embeddings": 2048}
    assert config.max_position_embeddings == 8192
    assert trained_context_length(config) == 2048


def test_load_local_dir_as_is_and_with_yarn(tmp_path):
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer, max_position_embeddings=256).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded_tokenizer = load_model_for_eval(tmp_path, device="cpu")
    assert loaded_tokenizer.padding_side == "left" and loaded_tokenizer.pad_token is not None
    assert model.config.rope_parameters["rope_type"] == "default" and not model.training
    scaled, _ = load_model_for_eval(tmp_path, device="cpu", rope_scaling=yarn_rope_scaling(256, 1024))
    assert scaled.config.rope_parameters["rope_type"] == "yarn"
    assert scaled.config.rope_parameters["factor"] == 4.0
    # YaRN stretches the low RoPE frequencies; the rotary embedding must have picked that up.
    assert not scaled.model.rotary_emb.inv_freq.allclose(model.model.rotary_emb.inv_freq)


def test_hypenet_refuses_yarn(tmp_path):
    tiny_hypenet(tiny_tokenizer()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no RoPE"):
        load_model_for_eval(tmp_path, device="cpu", rope_scaling=yarn_rope_scaling(256, 1024))


def test_logit_scaling_base_replaces_a_hypenet_checkpoints_own(tmp_path):
    """`hypenet eval --logit-scaling-base`: HyPE's inference-time base, set before the weights load; "off" switches
    the scaling off; the weights are the same and the logits change."""
    tokenizer = tiny_tokenizer()
    tiny_hypenet(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ids = torch.tensor([tokenizer("Bees visit flowers to collect nectar and pollen. " * 4)["input_ids"]])
    logits = {}
    for base in (None, 8000.0, "off"):
        model, _ = load_model_for_eval(tmp_path, device="cpu", logit_scaling_base=base)
        logits[base] = model(ids).logits
        assert model.config.attention_logit_scaling_base == {None: 500.0, 8000.0: 8000.0, "off": None}[base]
        assert model_footprint(model)["logit_scaling_base"] == {None: 500.0, 8000.0: 8000.0, "off": "off"}[base]
    assert not torch.allclose(logits[None], logits[8000.0]) and not torch.allclose(logits[None], logits["off"])
    # the first position attends to itself alone: the scaling cannot change it
    torch.testing.assert_close(logits[None][:, 0], logits["off"][:, 0])
    for bad in (1.0, 0.5, "8000"):
        with pytest.raises(ValueError, match="a number > 1 .* or 'off'"):
            load_model_for_eval(tmp_path, device="cpu", logit_scaling_base=bad)


def test_logit_scaling_base_of_a_model_without_hype_is_refused(tmp_path):
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer, max_position_embeddings=256).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="HyPE's setting of a HypeNet model.* a llama model: evaluate it without one"):
        load_model_for_eval(tmp_path, device="cpu", logit_scaling_base=8000.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is visible")
def test_a_cuda_device_without_a_gpu_or_an_unknown_device_is_refused_by_eval_and_generate(tmp_path, capsys):
    from hypenet.cli import main

    tokenizer = tiny_tokenizer()
    tiny_hypenet(tokenizer).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    capsys.readouterr()
    for command in (["eval", str(tmp_path / "m"), "--out", str(tmp_path / "e")],
                    ["generate", str(tmp_path / "m"), "--prompt", "hi"]):
        assert main([*command, "--device", "cuda"]) == 2  # the message alone, no traceback
        assert capsys.readouterr().err.startswith("error: --device cuda but no GPU is visible to torch")
        assert main([*command, "--device", "gpu"]) == 2
        assert "error: --device 'gpu' is not a device torch knows" in capsys.readouterr().err
