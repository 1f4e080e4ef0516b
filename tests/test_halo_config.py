"""HALO configs: defaults, presets, YAML files, KEY=VALUE overrides with types, errors that name the valid fields."""

from pathlib import Path

import pytest

from hypenet.halo.config import (
    PRESETS,
    HaloError,
    load_config,
    read_config,
    resolve,
    save_config,
    stage2_lr_for,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_paper_recipe_scaled_to_the_teacher():
    config = resolve(load_config(), teacher_params=1.72e9)
    tokens = (config.stage1.tokens, config.stage2.tokens, config.stage3.tokens)
    assert tokens == (320_000_000, 1_000_000_000, 1_000_000_000)
    assert (config.stage1.seq_len, config.stage2.seq_len, config.stage3.seq_len) == (512, 512, 16384)
    assert (config.stage1.batch_size, config.stage2.batch_size, config.stage3.batch_size) == (32, 96, 128)
    assert config.stage1.lr == 1e-3 and config.stage2.lr == 1e-4 and config.stage3.lr == 1e-5
    assert config.stage3.schedule == "constant" and config.stage3.gradient_checkpointing
    assert config.stage1.steps() == 19531 and config.stage3.steps() == 476  # the paper's ~20K and 500 steps
    small = resolve(load_config(), teacher_params=135e6)
    assert small.stage1.tokens == int(320e6 * 135e6 / 1.72e9)
    # the paper's rates at its teachers' sizes, the same power law elsewhere (capped at stage 1's 1e-3)
    assert [stage2_lr_for(p) for p in (1.72e9, 4.02e9, 7.57e9)] == [1e-4, 5e-5, 3e-5]
    assert small.stage2.lr == stage2_lr_for(135e6) == 7.9e-4 and stage2_lr_for(1e6) == 1e-3


def test_overrides_are_converted_to_the_field_types():
    config = load_config(
        "smoke",
        overrides=["stage2.lr=5e-5", "stage1.tokens=10M", "select.manual_layers=1,3", "tensorboard=true",
                   "stage3.micro_batch_size=none", "select.strategy=manual"],
        teacher="/some/dir",
    )
    assert config.stage2.lr == 5e-5 and config.stage1.tokens == 10_000_000
    assert config.select.manual_layers == [1, 3] and config.tensorboard is True
    assert config.stage3.micro_batch_size is None and config.teacher == "/some/dir"
    assert config.stage2.seq_len == PRESETS["smoke"]["stage2"]["seq_len"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage2.lrr=1", "valid fields of stage2: tokens, seq_len"),
        ("stage9.lr=1", "valid fields at the top level: teacher"),
        ("stage2.lr=fast", "expects float"),
        ("stage1.tokens=1.5", "expects int"),
        ("stage1=3", "is a section"),
        ("seed", "is not KEY=VALUE"),
        ("stage1.schedule=linear", "'cosine' or 'constant'"),
        ("export.logit_scaling_extend=-1", "export.logit_scaling_extend must be >= 0"),
        ("export.logit_scaling_tolerance=1.5", r"export.logit_scaling_tolerance must be in \[0, 1\).*got 1.5"),
        ("export.copy_probe=-1", "export.copy_probe is a number of copied spans per document"),
        ("export.copy_probe_span=1", r"export.copy_probe_span must be at least 2 tokens and at most stage3.seq_len"),
        ("data.unwrap_paragraphs=1.5", r"data.unwrap_paragraphs is a share of paragraphs, in \[0, 1\]; got 1.5"),
        ("data.repeat_spans=-1", r"data.repeat_spans is a share of the training chunks, in \[0, 1\]; got -1"),
        ("data.repeat_numbers=1.5", r"data.repeat_numbers is a share of the chunks with a repeated span, in \[0, 1\]"),
        ("data.repeat_numbers=0.5", r"with data.repeat_spans=0 no chunk gets a number: set both"),
        ("data.number_decoys=4", r"data.number_decoys go beside the numbers that data.repeat_numbers plants"),
        ("data.number_decoys=-1", r"data.number_decoys is a count of made-up numbers, 0 or more; got -1"),
        ("data.repeat_uuids=0.25", r"with data.repeat_spans=0 no chunk gets a UUID: set both"),
        ("data.repeat_uuids=-0.1", r"data.repeat_uuids is a share of the chunks with a repeated span, beside "
                                   r"data.repeat_numbers' \(together at most 1\): in \[0, 1\]; got -0.1"),
        ("select.recall_style=quiz", r"select.recall_style must be one of \['repeat', 'question'\]; got 'quiz'"),
        ("stage3.lr=-1e-5", r"stage3.lr must be positive; got -1e-05"),
        ("stage1.lr=0", r"stage1.lr must be positive; got 0.0"),
        ("stage1.min_lr=0.01", r"stage1.min_lr, where the cosine schedule ends, must be in \[0, stage1.lr\]; got 0.01"),
        ("stage2.min_lr=-1", r"stage2.min_lr, where the cosine schedule ends, must be in \[0, stage2.lr\]"),
        ("stage2.warmup_steps=-1", "stage2.warmup_steps must be >= 0; got -1"),
        ("stage3.grad_clip=0", "stage3.grad_clip, the largest gradient norm, must be positive; got 0.0"),
        ("stage2.micro_batch_size=0", r"stage2.micro_batch_size must be between 1 and stage2.batch_size \(96\)"),
        ("stage2.micro_batch_size=97", r"stage2.micro_batch_size must be between 1 and stage2.batch_size \(96\)"),
        ("data.heldout_fraction=1", r"data.heldout_fraction is a share of the documents, in \[0, 1\); got 1.0"),
        ("select.num_attention=0", r"select.num_attention must be at least 1 \(select.strategy=none keeps none\)"),
        ("select.lm_eval_include_path=[tasks]",
         r"select.lm_eval_include_path is for the tasks of select.lm_eval_recall and select.lm_eval_commonsense; "
         r"give those too"),
    ],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(HaloError, match=message):
        load_config(overrides=[override])


def test_repeat_uuids_share_the_repeated_spans_with_repeat_numbers():
    both = ["data.repeat_spans=1", "data.repeat_numbers=0.5"]
    with pytest.raises(HaloError, match=r"\(together at most 1\): in \[0, 0.5\]; got 0.75"):
        load_config(overrides=[*both, "data.repeat_uuids=0.75"])
    config = load_config(overrides=[*both, "data.repeat_uuids=0.5", "data.number_decoys=2"])
    assert (config.data.repeat_numbers, config.data.repeat_uuids, config.data.number_decoys) == (0.5, 0.5, 2)
    alone = load_config(overrides=["data.repeat_spans=1", "data.repeat_uuids=0.25", "data.number_decoys=2"])
    assert (alone.data.repeat_numbers, alone.data.repeat_uuids) == (0.0, 0.25)  # decoys beside the UUIDs alone
    assert load_config().data.repeat_uuids == 0.0


def test_a_constant_schedule_takes_any_positive_rate_below_min_lr():
    # min_lr is where the cosine schedule ends; the constant one never reads it
    assert load_config(overrides=["stage3.lr=1e-6", "stage3.schedule=constant"]).stage3.lr == 1e-6


def test_an_export_length_within_the_training_context_is_refused_before_anything_runs():
    """The export scores positions past stage 3's context; a length that has none fails when the config is read, not
    after the three stages have trained."""
    message = r"export.eval_len \(4096\) must exceed stage3.seq_len \(4096\).*--set export.eval_len=16384"
    with pytest.raises(HaloError, match=message):
        load_config(overrides=["stage3.seq_len=4096", "export.eval_len=4096"])
    assert load_config(overrides=["stage3.seq_len=4096", "export.eval_len=4097"]).export.eval_len == 4097


def test_unknown_preset_lists_the_presets():
    with pytest.raises(HaloError, match="choose one of: paper, cpu, smoke"):
        load_config("huge")


def test_yaml_round_trip_and_layering(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stage2:\n  lr: 3.0e-5\n  tokens: 2M\nseed: 7\n")
    config = load_config("cpu", files=[path], overrides=["seed=8"])
    assert config.stage2.lr == 3e-5 and config.stage2.tokens == 2_000_000 and config.seed == 8
    save_config(config, tmp_path / "saved.yaml")
    assert read_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("name", ["smoke", "cpu"])
def test_example_config_files_match_the_presets(name):
    assert load_config(files=[CONFIGS / f"{name}.yaml"]) == load_config(name)


def test_the_gpu_recipe_loads_joins_half_of_the_wrapped_paragraphs_and_repeats_spans_and_numbers():
    config = load_config(files=[CONFIGS / "gpu-smollm2.yaml"])
    assert config.device == "cuda" and config.compile
    assert config.data.unwrap_paragraphs == 0.5 and config.data.max_tokens == 11_000_000
    assert config.data.repeat_spans == 0.5
    assert (config.data.repeat_numbers, config.data.number_decoys) == (0.5, 0)  # the decoys: off since lease 52
    gpu = [CONFIGS / "gpu-smollm2.yaml"]
    decoys = load_config(files=gpu, overrides=["data.number_decoys=8"])
    assert (decoys.data.repeat_numbers, decoys.data.number_decoys) == (0.5, 8)
    with pytest.raises(HaloError, match=r"or turn both off with --set data.repeat_numbers=0 --set data.number_decoys"):
        load_config(files=gpu, overrides=["data.number_decoys=8", "data.repeat_numbers=0"])
    plain = load_config(files=gpu, overrides=["data.repeat_numbers=0"])
    assert (plain.data.repeat_numbers, plain.data.number_decoys, plain.data.repeat_spans) == (0.0, 0, 0.5)
    assert (config.stage2.tokens, config.stage2.seq_len, config.stage2.batch_size) == (79_000_000, 4096, 12)
    assert (config.stage3.tokens, config.stage3.batch_size, config.stage3.lr) == (6_000_000, 8, 1e-4)
    # the teacher's needle layers by hand since the sixtieth lease; HALO's scores for any other teacher
    assert (config.select.strategy, config.select.manual_layers) == ("manual", [17, 20, 21, 22, 23, 24, 26])
    assert load_config(files=gpu, overrides=["select.strategy=halo"]).select.strategy == "halo"
    assert config.export.logit_scaling_tolerance == 0.001


MANUAL_TEACHER_ERROR = (
    "select.manual_layers [17, 20, 21, 22, 23, 24, 26] were chosen for the teacher 'embedded' (select.manual_teacher), "
    "not for 'Qwen/Qwen3-1.7B': let HALO choose with --set select.strategy=halo, find where this teacher's attention "
    "finds the needle with --set select.strategy=needle, or keep these layers with --set "
    "select.manual_teacher=Qwen/Qwen3-1.7B"
)


def test_the_gpu_recipes_manual_layers_are_for_its_teacher_alone(tmp_path, monkeypatch):
    """select.manual_teacher: the recipe's hand-picked layers are the embedded SmolLM2-135M-Instruct's. It converts
    as "embedded", by another of its names or by a copy of its GGUF file anywhere (a GPU lease's); another teacher
    stops when the config is read, before anything loads, with the two settings that go on."""
    gpu = [CONFIGS / "gpu-smollm2.yaml"]
    config = load_config(files=gpu)
    assert (config.teacher, config.select.manual_teacher) == ("embedded", "embedded")
    assert load_config(files=gpu, teacher="smollm2").select.manual_layers == [17, 20, 21, 22, 23, 24, 26]
    copy = tmp_path / "leased" / "SmolLM2-135M-Instruct.Q4_1.gguf"  # (only its name counts: no GGUF is read)
    copy.parent.mkdir()
    copy.write_bytes(b"")
    assert load_config(files=gpu, teacher=str(copy)).teacher == str(copy)
    monkeypatch.chdir(tmp_path)
    assert load_config(files=gpu, teacher="leased/SmolLM2-135M-Instruct.Q4_1.gguf").teacher == str(copy)
    with_copy = load_config(files=gpu, overrides=[f"select.manual_teacher={copy}"])  # and the other way round
    assert (with_copy.teacher, with_copy.select.manual_teacher) == ("embedded", str(copy))

    with pytest.raises(HaloError, match="select.strategy=halo.*select.manual_teacher=") as error:
        load_config(files=gpu, teacher="Qwen/Qwen3-1.7B")
    assert str(error.value) == MANUAL_TEACHER_ERROR
    other = tmp_path / "SmolLM2-360M-Instruct.Q4_1.gguf"  # another GGUF file is another teacher
    other.write_bytes(b"")
    with pytest.raises(HaloError, match=f"not for '{other.name}': .* --set select.manual_teacher={other.name}$"):
        load_config(files=gpu, teacher=other.name)

    # either setting the error names goes on
    halo = load_config(files=gpu, teacher="Qwen/Qwen3-1.7B", overrides=["select.strategy=halo"]).select
    assert (halo.strategy, halo.manual_teacher) == ("halo", "embedded")
    kept = load_config(files=gpu, teacher="Qwen/Qwen3-1.7B", overrides=["select.manual_teacher=Qwen/Qwen3-1.7B"])
    assert (kept.select.strategy, kept.select.manual_layers) == ("manual", [17, 20, 21, 22, 23, 24, 26])
    assert load_config(files=gpu, teacher="Qwen/Qwen3-1.7B", overrides=["select.manual_teacher=none"]
                       ).select.manual_teacher is None
    # manual layers without select.manual_teacher go with any teacher, as before the setting
    plain = load_config(teacher="Qwen/Qwen3-1.7B", overrides=["select.strategy=manual", "select.manual_layers=2,5"])
    assert (plain.select.manual_layers, plain.select.manual_teacher) == ([2, 5], None)


def test_a_local_manual_teacher_is_saved_absolute_and_read_back(tmp_path, monkeypatch):
    """A select.manual_teacher that names a local folder gets the teacher's treatment (an absolute path), so that
    `./myqwen` and `myqwen` are one teacher, and a run's config.yaml holds it as --resume reads it back."""
    (tmp_path / "myqwen").mkdir()
    (tmp_path / "otherqwen").mkdir()
    monkeypatch.chdir(tmp_path)
    manual = ["select.strategy=manual", "select.manual_layers=1,3", "select.manual_teacher=myqwen"]
    config = load_config(overrides=manual, teacher="./myqwen")
    assert (config.teacher, config.select.manual_teacher) == (str(tmp_path / "myqwen"),) * 2
    with pytest.raises(HaloError, match=r"chosen for the teacher 'myqwen' \(select.manual_teacher\), not for "
                                        r"'./otherqwen': .* --set select.manual_teacher=./otherqwen$"):
        load_config(overrides=manual, teacher="./otherqwen")
    save_config(config, tmp_path / "config.yaml")
    assert "  manual_teacher: " + str(tmp_path / "myqwen") in (tmp_path / "config.yaml").read_text()
    saved = read_config(tmp_path / "config.yaml")
    assert saved == config
    monkeypatch.chdir(tmp_path / "otherqwen")  # (--resume from anywhere)
    assert load_config(base=saved) == config
    with pytest.raises(HaloError, match="let HALO choose with --set select.strategy=halo"):
        load_config(base=saved, teacher=str(tmp_path / "otherqwen"))


def test_local_teacher_and_data_paths_are_saved_absolute(tmp_path, monkeypatch):
    """`--teacher ./myqwen --data docs.jsonl`: the config holds absolute paths, so a run's config.yaml finds them from
    any directory; names that are not local paths (hub ids, hf: datasets, builtin, the embedded teacher) stay."""
    (tmp_path / "myqwen").mkdir()
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(teacher="./myqwen", data={"source": "docs.jsonl"})
    assert (config.teacher, config.data.source) == (str(tmp_path / "myqwen"), str(tmp_path / "docs.jsonl"))
    assert load_config(overrides=["teacher=myqwen"]).teacher == str(tmp_path / "myqwen")
    for teacher, source in [("Qwen/Qwen3-1.7B", "hf:wikitext:wikitext-2-raw-v1"), ("embedded", "builtin"),
                            ("missing-folder", "missing.jsonl")]:
        config = load_config(teacher=teacher, data={"source": source})
        assert (config.teacher, config.data.source) == (teacher, source)
    (tmp_path / "builtin").mkdir()  # `builtin` is the offline corpus whatever the folder holds
    assert load_config(data={"source": "builtin"}).data.source == "builtin"
