"""Teacher loading: the embedded GGUF teacher, specs that point nowhere, unsupported architectures."""

import re

import pytest
import torch

from hypenet.errors import MissingInputError
from hypenet.teachers import SUPPORTED_ARCHITECTURES, load_teacher, resolve_teacher
from hypenet.teachers.load import check_supported, checkpoint_location, embedded_teacher_gguf, load_tokenizer


def test_embedded_teacher_loads_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPENET_CACHE", str(tmp_path))
    model, tokenizer = load_teacher()  # dequantises the GGUF once, then loads the cached safetensors
    assert (model.config.model_type, model.config.num_hidden_layers,
            model.config.num_attention_heads) == ("llama", 30, 9)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    again, _ = load_teacher()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_a_tokenizer_is_read_from_a_folder_that_holds_only_its_gguf(tmp_path):
    gguf = embedded_teacher_gguf()
    (tmp_path / gguf.name).symlink_to(gguf)
    tokenizer = load_tokenizer(str(tmp_path), gguf_file=gguf.name)
    assert tokenizer.decode(tokenizer(" 7152935")["input_ids"]) == " 7152935" and len(tokenizer) == 49152
    with pytest.raises(MissingInputError, match=r"holds no GGUF file other.gguf: name one of \['SmolLM2-135M"):
        load_tokenizer(str(tmp_path), gguf_file="other.gguf")
    with pytest.raises(MissingInputError, match="holds no tokenizer files"):  # no GGUF named: the folder's own files
        load_tokenizer(str(tmp_path))
    (tmp_path / gguf.name).unlink()
    with pytest.raises(MissingInputError, match=f"holds no GGUF file {gguf.name}: it holds no .gguf file at all"):
        load_tokenizer(str(tmp_path), gguf_file=gguf.name)


def test_bad_teacher_specs_say_what_is_accepted(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_teacher(tmp_path / "missing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_teacher(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_teacher("./not/here")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(MissingInputError, match=r"notes.txt is a file but not a \.gguf file: pass a Hugging Face"):
        resolve_teacher(tmp_path / "notes.txt")
    assert resolve_teacher("Qwen/Qwen3-1.7B") == ("Qwen/Qwen3-1.7B", None)


@pytest.mark.parametrize("name", ["teacher", "smollm2", "default"])
def test_a_local_folder_named_like_the_embedded_teacher_is_the_users_own(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text("{}")
    assert resolve_teacher(name) == (name, None)


def test_a_hub_id_that_cannot_be_had_is_named_with_what_to_pass(monkeypatch, capsys, tmp_path):
    import huggingface_hub.constants

    from hypenet.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as without network, at once
    expected = (r"nobody/no-such-model is not a local folder or file, and the Hugging Face hub could not give its "
                r"config.json: .* Pass a checkpoint folder, a .gguf file or 'embedded'")
    with pytest.raises(MissingInputError, match=expected):
        checkpoint_location("nobody/no-such-model")
    for command in (["generate", "nobody/no-such-model", "--prompt", "hi"],
                    ["eval", "nobody/no-such-model", "--out", str(tmp_path / "eval")],
                    ["convert", "--plan", "--teacher", "nobody/no-such-model", "--out", str(tmp_path / "run")]):
        assert main(command) == 2  # the message alone, no traceback
        assert re.match("error: " + expected, capsys.readouterr().err)


def test_teacher_names_the_embedded_model_everywhere():
    assert resolve_teacher("teacher") == resolve_teacher("embedded") == resolve_teacher(None)


def test_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(ValueError) as err:
        check_supported("gpt2", "some/teacher")
    assert all(name in str(err.value) for name in SUPPORTED_ARCHITECTURES)


def test_a_teachers_sliding_window_is_found_where_it_limits_attention():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    from hypenet.teachers.transfer import sliding_window

    assert sliding_window(MistralConfig(sliding_window=4096, max_position_embeddings=32768)) == 4096
    assert sliding_window(MistralConfig(sliding_window=None)) is None
    assert sliding_window(MistralConfig(sliding_window=4096, max_position_embeddings=4096)) is None  # no limit
    assert sliding_window(Qwen3Config(sliding_window=4096, use_sliding_window=False)) is None  # Qwen3's default
    assert sliding_window(Qwen2Config(sliding_window=2048, use_sliding_window=True)) == 2048
    assert sliding_window(LlamaConfig()) is None
