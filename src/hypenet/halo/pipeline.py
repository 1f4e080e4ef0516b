"""HALO end to end: teacher -> corpus -> stage 1 -> layer selection -> stage 2 -> stage 3 -> export -> report.

Output folder layout:
    config.yaml                 the settings of the conversion (a resumed or continued run must keep them)
    stages/<stage>/             one folder per stage: done.json once finished, losses.jsonl, checkpoints/ and
                                wall_time.json (the time spent in it so far) meanwhile; the layer selection's
                                scored_layers.json: the scores of the layers swept so far, for a resumed sweep
    model/                      the exported HypeNet checkpoint (AutoModelForCausalLM, trust_remote_code=True)
    report.json, report.md      losses per stage, selected layers and scores, tokens, wall time

Wall time: a stage's `wall_time_s` is the wall-clock time spent in it (building, training, saving), summed over every
invocation that ran it, those stopped part-way and resumed included; its `loading_time_s`, what the invocations that
began with it spent before it (loading the teacher and the data), and `startup_time_s`, their start-up (from the
process's start to the conversion's: the interpreter and the imports; under `accelerate launch` or torchrun from the
launcher's start), where a `hypenet` command ran it on a system that tells a process's start (Linux: `command_age`).
The report's `wall_time_s` is the sum of them over the stages.
A stage's time so far is saved in its wall_time.json after every training step and when an invocation
stops in it (Ctrl-C, SIGTERM, an error); a SIGKILL loses what that invocation spent since the last save (at most the
step in flight while training).

`convert` runs every stage, `run_stages(config, ["stage2"])` one (the `hypenet stage2` command); both skip stages
that are done when resuming, and a stage's training resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from functools import cached_property
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from torch import nn

from ..errors import InvalidInputError, MissingInputError, first_line
from ..machine import check_cpu_processes, machine_label
from ..model import HypeNetForCausalLM
from ..teachers import hypenet_config_from_teacher, load_teacher
from ..teachers.transfer import sliding_window
from . import engine, stage1, stage2, stage3
from .config import (
    ConvertConfig,
    HaloError,
    absolute_local_paths,
    beyond_teacher_window,
    config_differences,
    from_dict,
    is_main_rank,
    read_config,
    resolve,
    save_config,
    to_dict,
    write_text_atomic,
)
from .select import SCORED_LAYERS, check_selection

log = logging.getLogger(__name__)

STAGES = ("stage1", "select", "stage2", "stage3", "export")
TEACHER_STAGES = ("stage1", "select", "stage2")  # those that run the teacher; stage 3 and export need its tokenizer
DONE = "done.json"
WALL_TIME = "wall_time.json"  # a stage's time so far, over the invocations that ran it (until done.json holds it)
CONFIG_FILE = "config.yaml"
# held by the process writing a conversion (two would write each other's checkpoints), which removes it as it ends
LOCK_FILE = ".hypenet.lock"
MODEL_DIR = "model"
# Settings that change how a run executes, not what it computes: they may differ when resuming.
RUN_FIELDS = {"out", "device", "mixed_precision", "checkpoint_every", "tensorboard", "compile", "deterministic"}
# Per-stage fields that a resumed stage may change: how a step's sequences are split into forwards (the step and its
# gradient are the same, up to the order of the sums), which is what an out-of-memory error asks the user to lower.
STAGE_RUN_FIELDS = {"micro_batch_size"}
# Fields that decide nothing a stage computes, only whether a config may run at all (config.check_manual_teacher): a
# resumed run may change them (a run begun before select.manual_teacher existed has it None in its config.yaml).
CHECK_FIELDS = {"select.manual_teacher"}


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields from the third on (the state; the parent's pid next, the start time 20th): those after
    field 2, the command's name, which may hold spaces and ")"."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_age(pid: int | str = "self") -> float | None:
    """Seconds since process `pid` (this one by default) started, as the kernel tells it: /proc/PID/stat's starttime
    (field 22, clock ticks since boot) against the boot-time clock, to a tick (10 ms); None where there is no /proc
    (macOS, Windows) or no such process."""
    try:
        ticks = int(_stat_fields(pid)[19])
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


# What a launcher that starts one process per GPU sets in their environment (torchrun's elastic agent; accelerate
# launch's launcher for one process), and words of its command line
LAUNCHED_ENV = ("TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")
LAUNCHERS = ("torchrun", "torch.distributed.run", "accelerate", "deepspeed")


def parent_pid(pid: int | str) -> int | None:
    """The parent of process `pid` (/proc/PID/stat's field 4); None where it is not known."""
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, ValueError, IndexError):
        return None


def command_age(ancestors: int = 3) -> float | None:
    """Seconds since the command started: this process's age (`process_age`), or, in a process started by a launcher
    (`accelerate launch`, torchrun), the launcher's, whose own start-up (importing torch and accelerate before it
    starts the workers) is the command's too. The launcher is the nearest of this process's `ancestors` nearest
    ancestors (its parent under torchrun; its grandparent where an mpirun or a shell stands between) whose command
    line names one; only where a launcher's variable is set."""
    age = process_age()
    if age is None or not any(name in os.environ for name in LAUNCHED_ENV):
        return age
    pid = os.getppid()
    for _ in range(ancestors):
        if pid is None or pid <= 1:
            break
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            break
        if any(word in command for word in LAUNCHERS):
            launcher = process_age(pid)
            return launcher if launcher is not None and launcher >= age else age
        pid = parent_pid(pid)
    return age


class StageClock:
    """A stage's wall-clock time summed over the invocations that ran it: what the earlier ones spent (WALL_TIME in
    its folder) plus this one's since `start`; and the time invocations spent loading before it (`loading`: this
    invocation's, when it begins with this stage, is added to the earlier ones'), and starting up before that
    (`startup`, the same way; None while no invocation's was measured). `machines`: what ran those invocations
    (`machine_label`), each once, in the order they first ran it; `machine` is this invocation's. `runs`: how many
    invocations ran it, this one included (those that saved their time: a run killed before its first save is not
    counted)."""

    def __init__(self, stage_dir: Path, loading: float, main: bool, startup: float | None = None,
                 machine: str | None = None):
        self.path, self.main = stage_dir / WALL_TIME, main
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.before = saved.get("wall_time_s", 0.0)
        self.loading = saved.get("loading_time_s", 0.0) + loading
        measured = [t for t in (saved.get("startup_time_s"), startup) if t is not None]
        self.startup = sum(measured) if measured else None
        self.machines = list(saved.get("machines", []))
        self.runs = saved.get("runs", 0) + 1
        if machine is not None and machine not in self.machines:
            self.machines.append(machine)
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def save(self) -> None:
        """Write the time so far (the main process; the others' is the same stage's)."""
        if self.main:
            times = {"wall_time_s": self.seconds(), "loading_time_s": self.loading, "startup_time_s": self.startup,
                     "machines": self.machines or None, "runs": self.runs}
            write_text_atomic(self.path, json.dumps({k: v for k, v in times.items() if v is not None}))


def done_info(out: Path, name: str) -> dict | None:
    path = Path(out) / "stages" / name / DONE
    return json.loads(path.read_text()) if path.is_file() else None


class Conversion:
    """One conversion's shared state: its config, output folder, teacher and corpus (each loaded once)."""

    def __init__(self, config: ConvertConfig, resume: bool = False, teacher_weights: bool = True):
        """teacher_weights=False: the teacher's weights are not loaded (`self.teacher` is None), for an invocation
        whose stages need only its tokenizer and config (`needs_teacher`)."""
        self.requested = config
        self.out = Path(config.out)
        self.running: list[str] = []  # the stages this invocation runs (run_stages sets them)
        self.loading = 0.0  # seconds this invocation spent before its first stage (run_stages measures it)
        self.startup: float | None = None  # ... and before the conversion began, where measured (run_stages)
        self.clock: StageClock | None = None  # the stage running
        if config.device == "cuda" and not torch.cuda.is_available():
            raise HaloError("device=cuda but no GPU is visible; use --device cpu")
        cpu = config.device == "cpu" or not torch.cuda.is_available()
        self.state = PartialState(cpu=cpu)
        check_cpu_processes(self.state)  # (before the first barrier, which an old accelerate runs on a GPU)
        precision = config.mixed_precision if config.mixed_precision != "auto" else ("no" if cpu else "bf16")
        # A state made before this one (by the caller, as the tests do with DeepSpeed's CPU accelerator) stays as it
        # was: PartialState ignores `cpu` once initialised. Under DeepSpeed the engine's Accelerator(cpu=True) would
        # leave DeepSpeed's state without its plugin (AttributeError: 'AcceleratorState' object has no attribute
        # 'mixed_precision'); with cpu=False it runs on the state's device, the CPU included. Every other state (one
        # process, DDP, FSDP) gets `cpu` as before.
        engine_cpu = cpu and self.state.distributed_type != DistributedType.DEEPSPEED
        self.settings = engine.RunSettings(
            checkpoint_every=config.checkpoint_every, resume=resume, cpu=engine_cpu, mixed_precision=precision,
            tensorboard_dir=self.out / "tensorboard" if config.tensorboard else None, compile=config.compile,
            deterministic=config.deterministic,
        )
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # the frozen teacher needs no fp32 master
        try:
            with self.state.main_process_first():  # the first load of a GGUF teacher writes a cache
                teacher, self.tokenizer = load_teacher(config.teacher, dtype=dtype, device=self.state.device,
                                                       weights=teacher_weights)
        except (OSError, ValueError) as error:  # missing files, unknown hub id, unsupported architecture
            raise HaloError(f"cannot load the teacher {config.teacher!r}: {error}") from error
        check_tokenizer(teacher, self.tokenizer, config.teacher)
        self.teacher_config = teacher.config
        self.teacher_parameters = sum(p.numel() for p in teacher.parameters())  # (on the meta device too)
        self.teacher = teacher if teacher_weights else None
        if not teacher_weights:
            log.info("the teacher's weights are not loaded: the stages this run has left need only its tokenizer")
        window = sliding_window(self.teacher_config)
        if window is not None and self.state.is_main_process:
            log.warning("the teacher attends within a sliding window of %d tokens; the student's attention layers "
                        "attend to the whole sequence (HypeNet has no window), so past %d tokens they see more than "
                        "the teacher they learn from", window, window)
        self.config = resolve(config, self.teacher_parameters)
        select = self.config.select
        try:
            check_selection(select.strategy, select.num_attention, select.manual_layers,
                            self.teacher_config.num_hidden_layers)
        except ValueError as error:
            raise HaloError(str(error)) from None

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    def stage_dir(self, name: str) -> Path:
        return self.out / "stages" / name

    def done(self, name: str) -> dict | None:
        return done_info(self.out, name)

    @cached_property
    def corpus(self):
        from ..data import tokenize_corpus

        data = self.config.data
        budget = max(self.config.stage1.tokens, self.config.stage2.tokens, self.config.stage3.tokens)
        max_tokens = data.max_tokens or budget  # training tokens; a smaller corpus is repeated (with a warning)
        try:
            with self.state.main_process_first():  # the others then load the tokenised cache
                corpus = tokenize_corpus(
                    data.source, self.tokenizer, heldout_fraction=data.heldout_fraction, max_tokens=max_tokens,
                    seed=self.config.seed if data.seed is None else data.seed,
                    unwrap_paragraphs=data.unwrap_paragraphs, text_field=data.text_field,
                )
        except (OSError, ValueError) as error:  # a missing file, an unreadable format, no documents
            raise HaloError(f"cannot read the data {data.source!r}: {error}") from error
        if len(corpus.train_tokens) == 0:
            raise HaloError(f"the data {data.source!r} holds no text: give a corpus with documents (see --data)")
        if not corpus.heldout_docs:  # found now, not after the training stages (the export needs them)
            why = ("data.heldout_fraction is 0" if data.heldout_fraction == 0 else
                   "it holds one document (a .txt file is one document)")
            raise HaloError(
                f"the data {data.source!r} leaves no document out of training: {why}, and the export chooses the "
                "logit-scaling base on held-out documents. Give several documents (a .jsonl file with one per line, or "
                "a folder of .txt files) and keep data.heldout_fraction above 0"
            )
        return corpus

    def chunks(self, name: str):
        from ..data import PackedChunks

        seq_len = getattr(self.config, name).seq_len
        available = len(self.corpus.train_tokens)
        if available < seq_len:
            raise HaloError(
                f"the data {self.config.data.source!r} has {available} training tokens, fewer than one {name} sequence "
                f"({name}.seq_len={seq_len}): give more data or lower {name}.seq_len"
            )
        # stage 1 aligns attention outputs on the text as cut; stages 2 and 3 may also practise copying spans
        data = self.config.data
        repeat = data.repeat_spans if name in ("stage2", "stage3") else 0.0
        numbers, uuids = (data.repeat_numbers, data.repeat_uuids) if repeat else (0.0, 0.0)
        number_ids = None
        if numbers or uuids:
            tokenizer = self.tokenizer
            number_ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        return PackedChunks(self.corpus.train_tokens, seq_len, seed=self.config.seed, repeat_spans=repeat,
                            repeat_numbers=numbers, number_ids=number_ids, repeat_uuids=uuids,
                            number_decoys=data.number_decoys if numbers or uuids else 0)

    def train(self, name: str, objective: nn.Module, config) -> engine.TrainResult:
        clock, after_step = self.clock, self.settings.after_step

        def each_step(step: int) -> None:  # the stage's time so far, saved for a killed run's resume
            if clock is not None:
                clock.save()
            if after_step is not None:
                after_step(step)

        estimate = None
        if len(self.running) > 1:  # a conversion, not a stage alone: log its time left
            estimate = functools.partial(self.log_time_left, name, config.batch_size * config.seq_len)
        settings = dataclasses.replace(self.settings, after_step=each_step, progress=estimate)
        return engine.train(name, objective, config, self.chunks(name), self.stage_dir(name), settings)

    def log_time_left(self, name: str, tokens_per_step: int, done: int, steps: int, tokens_per_s: float) -> None:
        """Log the estimate of the time this conversion takes from here (`plan.time_left`): stage `name`'s remaining
        steps, the training stages after it that this invocation runs, the layer selection where it is ahead and its
        cost per token is known (the built-in probes' sweep), and the export's search over its grid of bases where it
        is ahead, at `name`'s measured tokens_per_s (the engine's `RunSettings.progress`)."""
        from .plan import EXPORT, SELECT, TRAINED, export_grid, selection_tokens, time_left, trained_tokens

        ahead = [stage for stage in self.running[self.running.index(name) + 1:]
                 if stage in (*TRAINED, SELECT, EXPORT) and self.done(stage) is None]
        costs = self.stage_costs() if ahead else None
        export, later = self.config.export, {}
        for stage in ahead:
            if stage in TRAINED:
                later[stage] = trained_tokens(self.config, stage)
            elif costs and stage in costs and stage == SELECT:  # (without a cost per token, left out: the line says so)
                later[stage] = selection_tokens(self.config, self.teacher_config.num_hidden_layers)
            elif costs and stage in costs:  # the export: every base of its grid runs the same sequences
                later[stage] = export_grid(export) * sum(self.export_lengths())
        cost = {n: c / costs[name] for n, c in costs.items()} if costs else None
        # a sweep ahead but left out (lm-eval's tasks, or no cost per token) is named; one done, or none, is not
        uncounted = ["selection"] * (SELECT in ahead and SELECT not in later
                                     and self.config.select.strategy in ("halo", "needle"))
        if EXPORT in later and export.logit_scaling_extend and len(set(export.logit_scaling_candidates) - {None}) > 1:
            uncounted.append(f"up to {export.logit_scaling_extend} bases past the export's grid")
        elif EXPORT in ahead and EXPORT not in later and self.attention_layers_ahead():
            uncounted.append("export")
        log.info("%s", time_left(name, (steps - done) * tokens_per_step, tokens_per_s, later, cost,
                                 " and ".join(uncounted))[1])

    def attention_layers_ahead(self) -> bool:
        """Whether the student will have attention layers, so that the export searches a logit-scaling base."""
        from .plan import attention_layer_count

        return attention_layer_count(self.config, self.teacher_config.num_hidden_layers) > 0

    def export_docs(self) -> list:
        """The held-out documents the export scores: the `export.max_docs` longest."""
        return sorted(self.corpus.heldout_docs, key=len, reverse=True)[: self.config.export.max_docs]

    @functools.cache  # (the held-out documents are read once per conversion)
    def export_lengths(self) -> list[int]:
        """The lengths of the sequences the export's search runs through the student for each base it measures."""
        from .export import search_lengths

        cfg = self.config.export
        return search_lengths(self.export_docs(), self.config.stage3.seq_len, cfg.eval_len, cfg.copy_probe,
                              cfg.copy_probe_span)

    @functools.cache  # (worked out once per conversion: the ratio between any two stages follows from it)
    def stage_costs(self) -> dict[str, float] | None:
        """The training stages' time per token relative to stage 1's, the layer selection's where it sweeps with the
        built-in probes, and the export's where it searches a base (`plan.relative_costs`), or None when it cannot be
        worked out (the estimate then takes the later training stages at the measured stage's tokens/s, and says so,
        and leaves the selection and the export out)."""
        from .plan import relative_costs

        try:
            with unsharded_loading():  # (the main process alone builds the meta-device objectives, also under ZeRO-3)
                return relative_costs(self.teacher_config, self.config, "stage1", gpu=self.state.device.type == "cuda",
                                      export_lengths=self.export_lengths() if "export" in self.running else None)
        except Exception as error:  # an estimate must not stop a conversion
            log.warning("conversion: the later stages' cost per token is unknown (%s); the estimate takes them at "
                        "the measured stage's tokens/s", first_line(error))
            return None

    def stage1_layers(self, name: str = stage1.LAYERS_FILE) -> dict[int, nn.Module]:
        """Stage 1's lightning students by layer (name=stage1.ATTENTION_LAYERS_FILE: its attention students, if any)."""
        config = hypenet_config_from_teacher(self.teacher_config)
        return stage1.load_layers(self.stage_dir("stage1"), config, self.state.device, name)

    def save_model(self, model: HypeNetForCausalLM, weights: dict, name: str) -> None:
        """Save a stage's model as an HF checkpoint, with the full weights the engine gathered (FSDP shards them), and
        the tokenizer, so that `hypenet eval` and `from_pretrained` take the folder as it is."""
        if self.is_main_process:
            model.save_pretrained(self.stage_dir(name) / MODEL_DIR, state_dict=weights)
            self.tokenizer.save_pretrained(self.stage_dir(name) / MODEL_DIR)
        self.state.wait_for_everyone()

    def load_model(self, name: str, alone: bool = False) -> HypeNetForCausalLM:
        """A stage's saved model on this process's device. Every process loads it for the next stage's training
        (under DeepSpeed ZeRO-3 transformers builds it sharded); alone=True: only this process loads it, whole, to
        run it by itself (the export)."""
        path = self.stage_dir(name) / MODEL_DIR
        with unsharded_loading() if alone else contextlib.nullcontext():
            return HypeNetForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.state.device)

    def release_teacher(self) -> None:
        """Stage 3 and export need only the tokenizer: free the teacher's memory."""
        self.teacher = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run_stage(self, name: str) -> dict:
        info = self.done(name)
        if info is not None:
            log.info("%s: already done, skipping", name)
            return info
        if self.is_main_process and name in TEACHER_STAGES:
            context = getattr(self.teacher_config, "max_position_embeddings", None)
            for warning in beyond_teacher_window(self.config, context):
                if warning.startswith(f"{name}."):
                    warnings.warn(warning, stacklevel=2)
        if self.is_main_process:
            self.stage_dir(name).mkdir(parents=True, exist_ok=True)
        self.state.wait_for_everyone()
        # this invocation's start-up and loading count with the first stage it runs
        self.clock = StageClock(self.stage_dir(name), self.loading, self.is_main_process, self.startup,
                                machine_label(self.state.device))
        self.loading, self.startup = 0.0, None
        try:
            info = STAGE_RUNNERS[name](self)
        except BaseException:  # Ctrl-C, SIGTERM, an error: the time spent counts when the stage is run again
            with contextlib.suppress(OSError):
                self.clock.save()
            raise
        finally:
            clock, self.clock = self.clock, None
        info["wall_time_s"] = round(clock.seconds(), 2)
        info["loading_time_s"] = round(clock.loading, 2)
        if clock.startup is not None:
            info["startup_time_s"] = round(clock.startup, 2)
        info["machines"] = clock.machines
        info["runs"] = clock.runs
        if self.is_main_process:
            write_text_atomic(self.stage_dir(name) / DONE, json.dumps(info, indent=1))
            engine.remove_checkpoints(self.stage_dir(name))
            for partial in (WALL_TIME, SCORED_LAYERS):  # (the layer selection's scores so far: done.json holds them)
                (self.stage_dir(name) / partial).unlink(missing_ok=True)
        self.state.wait_for_everyone()
        return info

    def record_config(self) -> None:
        """Save config.yaml; refuse settings that contradict stages already (partly) run in this folder."""
        saved_path = self.out / CONFIG_FILE
        refusal = saved_settings_refusal(self.out, self.requested)
        if refusal:
            raise HaloError(refusal)
        if self.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.requested, saved_path)
        self.state.wait_for_everyone()

    def report(self) -> dict:
        """The conversion report (the schema of report.write_report): what the finished stages recorded."""
        done = {name: info for name in STAGES if (info := self.done(name)) is not None}
        trained = {name: done[name] for name in ("stage1", "stage2", "stage3") if name in done}
        loading = sum(info.get("loading_time_s", 0.0) for info in done.values())  # (older runs did not record it)
        startup = [info["startup_time_s"] for info in done.values() if "startup_time_s" in info]  # (where measured)
        return {
            "teacher": self.config.teacher,
            "teacher_parameters": self.teacher_parameters,
            "data": self.config.data.source,
            "student_path": str(self.out / MODEL_DIR) if "export" in done else None,
            "tokens": sum(stage["tokens"] for stage in trained.values()),
            # every stage's time and the start-up and loading before it, over every invocation (the module docstring)
            "wall_time_s": round(sum(info["wall_time_s"] for info in done.values()) + loading + sum(startup), 2),
            "loading_time_s": round(loading, 2),
            **({"startup_time_s": round(sum(startup), 2)} if startup else {}),
            "stages": trained,
            "selection": done.get("select"),
            "export": done.get("export"),
            "config": to_dict(self.config),
        }


def settings_clashes(saved: ConvertConfig, requested: ConvertConfig, started: list[str]) -> list[str]:
    """The settings of `requested` that differ from `saved` where it matters: those of the `started` stages (which a
    resumed run goes on from), and the teacher, data and seed they were run with."""
    locked = set(started) | ({"teacher", "data", "seed"} if started else set())
    # (a config.yaml written before paths were saved absolute holds them as typed, relative to where it was run)
    saved, requested = (absolute_local_paths(from_dict(to_dict(config))) for config in (saved, requested))
    return [
        key for key in config_differences(saved, requested)
        if key.split(".")[0] in locked and key.split(".")[0] not in RUN_FIELDS
        and key.split(".")[-1] not in STAGE_RUN_FIELDS and key not in CHECK_FIELDS
    ]


def reused(out: Path, name: str) -> bool:
    """Whether a resumed run would go on from what stage `name` left in `out`: it finished, or it wrote a checkpoint.
    A stage stopped before its first checkpoint (out of memory at step 1, say) starts again from step 0, so its
    settings may change."""
    return done_info(out, name) is not None or engine.latest_checkpoint(out / "stages" / name) is not None


def saved_settings_refusal(out: Path, requested: ConvertConfig, replaced: tuple[str, ...] = ()) -> str | None:
    """Why `requested` may not go on in `out`: settings that differ from its config.yaml for the stages a resumed run
    would go on from (`reused`), leaving out the `replaced` ones (--overwrite); None when nothing clashes."""
    saved_path = out / CONFIG_FILE
    if not saved_path.is_file():
        return None
    kept = [name for name in STAGES if name not in replaced and reused(out, name)]
    clashes = settings_clashes(read_config(saved_path), requested, kept)
    return (f"{out} was run with other settings for {', '.join(clashes)} (see {saved_path}); keep them, or start "
            f"the conversion again with yours: `hypenet convert` with your options and --overwrite (it replaces the "
            f"conversion in {out}), or another --out") if clashes else None


def check_start_from(source: Path, out: Path, config: ConvertConfig, earlier: list[str]) -> None:
    """`hypenet STAGE --from SOURCE --out OUT`: SOURCE must hold a conversion whose stages before STAGE are done,
    made with the settings asked for here; OUT may hold those stages only as copies of SOURCE's (a branch resumed)."""
    if source.resolve() == out.resolve():
        raise HaloError(f"--from and --out are both {out}; leave out --from to continue the conversion there")
    if not (source / CONFIG_FILE).is_file():
        raise HaloError(f"--from {source}: no conversion there (it has no {CONFIG_FILE})")
    missing = [name for name in earlier if done_info(source, name) is None]
    if missing:
        raise HaloError(f"--from {source}: its {missing[0]} is not finished; finish it there first "
                        f"(hypenet {missing[0]} --out {source} --resume)")
    clashes = settings_clashes(read_config(source / CONFIG_FILE), config, earlier)
    if clashes:
        raise HaloError(f"--from {source}: its {', '.join(earlier)} were run with other settings for "
                        f"{', '.join(clashes)} (see {source / CONFIG_FILE}); keep them, or run those stages again")
    for name in earlier:
        mine = done_info(out, name)
        if mine is not None and mine != done_info(source, name):
            raise HaloError(f"{out} already holds a finished {name} that is not the one in {source}: "
                            "choose a new --out for the branch")


def copy_earlier_stages(source: Path, out: Path, earlier: list[str]) -> None:
    """Copy SOURCE's finished stages `earlier` into OUT where OUT lacks them (a half-copied one is copied again)."""
    for name in earlier:
        if done_info(out, name) is None:
            target = out / "stages" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source / "stages" / name, target.with_name(name + ".copying"), dirs_exist_ok=True)
            (target.with_name(name + ".copying")).rename(target)


def check_tokenizer(teacher, tokenizer, spec: str) -> None:
    rows = teacher.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # a few added tokens past the embedding (a tokenizer class that adds its own specials)
        beyond = tokenizer.convert_ids_to_tokens(list(range(rows, min(len(tokenizer), rows + 5))))
        raise HaloError(
            f"the tokenizer of teacher {spec} has {len(tokenizer)} tokens but the teacher's embedding has {rows} rows; "
            f"ids {rows} and up ({', '.join(map(repr, beyond))}{', ...' if len(tokenizer) > rows + 5 else ''}) have "
            "no embedding. Use the teacher's own tokenizer files, or resize its embedding to the tokenizer "
            "(model.resize_token_embeddings(len(tokenizer)), then save_pretrained)"
        )
    if len(tokenizer) < 0.9 * rows:
        raise HaloError(
            f"the tokenizer of teacher {spec} has {len(tokenizer)} tokens but the teacher's embedding has {rows} rows: "
            "the tokenizer belongs to another model; put the teacher's own tokenizer files next to its weights"
        )
    if tokenizer.eos_token_id is None:
        raise HaloError(f"the tokenizer of teacher {spec} has no EOS token, which separates documents in the training "
                        "data: set the teacher's own (tokenizer.eos_token = '...', then tokenizer.save_pretrained "
                        "into the teacher's folder)")
    # Some checkpoints list other end tokens in their config than their tokenizer does: suspicious, not fatal.
    generation = getattr(teacher, "generation_config", None)
    teacher_eos = {
        i for source in (teacher.config.eos_token_id, getattr(generation, "eos_token_id", None))
        for i in (source if isinstance(source, list) else [source]) if i is not None
    }
    if teacher_eos and tokenizer.eos_token_id not in teacher_eos:
        log.warning("the tokenizer's EOS id %d is not among the teacher's end tokens %s: is it the teacher's own "
                    "tokenizer?", tokenizer.eos_token_id, sorted(teacher_eos))


def _run_select(conv: Conversion) -> dict:
    from .select import select_layers

    if not conv.is_main_process:  # the main process records the choice; the others read it from done.json
        return {}
    cfg = conv.config.select
    lm_eval = {"recall": cfg.lm_eval_recall, "commonsense": cfg.lm_eval_commonsense} if cfg.lm_eval_recall else None
    with user_errors("layer selection"):
        result = select_layers(
            conv.teacher, conv.tokenizer, conv.stage1_layers() if cfg.strategy == "halo" else None,
            strategy=cfg.strategy, num_attention=cfg.num_attention,
            # (a config's manual_layers are for strategy "manual": `--set select.strategy=halo` over a config that
            # sets them, e.g. configs/gpu-smollm2.yaml, lets HALO choose)
            manual_layers=cfg.manual_layers if cfg.strategy == "manual" else None,
            heldout_docs=conv.corpus.heldout_docs, recall_samples=cfg.recall_samples, recall_context=cfg.recall_context,
            recall_style=cfg.recall_style,
            commonsense_tokens=cfg.commonsense_tokens, batch_size=cfg.batch_size, lm_eval_tasks=lm_eval,
            lm_eval_limit=cfg.lm_eval_limit, lm_eval_include_path=cfg.lm_eval_include_path, seed=conv.config.seed,
            device=conv.state.device,
            partial=conv.stage_dir("select") / SCORED_LAYERS, fingerprint=selection_fingerprint(conv),
            after_layer=conv.clock.save if conv.clock is not None else None,  # (a killed sweep's time counts too)
        )
    return result.to_dict()


def check_lm_eval_tasks(config: ConvertConfig, pending: list[str]) -> None:
    """Where the layer selection is still to run on lm-eval's tasks (select.lm_eval_recall/commonsense), that
    lm-eval is installed, knows every task, and has their datasets (fetched now into the datasets cache, where the
    selection finds them): a HaloError at the conversion's start, not after stage 1 has trained."""
    cfg = config.select
    if "select" not in pending or cfg.strategy != "halo" or not cfg.lm_eval_recall:
        return
    from ..eval.lm_eval_adapter import fetch_task_data
    from .probes import INCLUDE_OPTION

    try:
        fetch_task_data([*cfg.lm_eval_recall, *cfg.lm_eval_commonsense], cfg.lm_eval_include_path, INCLUDE_OPTION)
    except (ImportError, InvalidInputError, MissingInputError) as error:
        raise HaloError(f"layer selection by lm-eval tasks: {first_line(error)}") from error


def check_needle_prompts(conv: Conversion, pending: list[str]) -> None:
    """Where the layer selection is still to run with strategy "needle", that its NIAH prompts can be built from this
    conversion's held-out documents at select.recall_context (one per depth, with the tokenizer): a HaloError at the
    conversion's start, not after stage 1 has trained."""
    if "select" not in pending or conv.config.select.strategy != "needle":
        return
    from .select import needle_grid

    try:
        needle_grid(conv.tokenizer, conv.corpus.heldout_docs, conv.config.select.recall_context, 1, conv.config.seed)
    except ValueError as error:
        raise HaloError(f"layer selection: {first_line(error)}") from error


def selection_fingerprint(conv: Conversion) -> dict:
    """What decides the layer selection's scores besides its probes' settings (which `select_layers` adds): what a
    resumed run must keep for the stages it goes on from (`settings_clashes`: the teacher, the data, the seed), the
    stage-1 result the sweep swaps in (its done.json, as `check_start_from` tells one stage 1 from another), and the
    teacher's precision and device (the same scores to the last float). A sweep stopped part-way goes on from the
    layers it scored only when these are the same (`select.ScoredLayers`)."""
    config = absolute_local_paths(from_dict(to_dict(conv.config)))
    stage1_done = json.dumps(conv.done("stage1"), sort_keys=True)
    return {
        "teacher": config.teacher, "teacher_parameters": conv.teacher_parameters, "data": to_dict(config.data),
        "seed": config.seed, "stage1": hashlib.sha256(stage1_done.encode()).hexdigest()[:16],
        "dtype": str(next(conv.teacher.parameters()).dtype), "device": conv.state.device.type,
    }


def _run_stage2(conv: Conversion) -> dict:
    return stage2.run(conv, conv.done("select")["attention_layers"])


def _run_stage3(conv: Conversion) -> dict:
    conv.release_teacher()
    return stage3.run(conv)


def _run_export(conv: Conversion) -> dict:
    from .export import export_checkpoint

    if not conv.is_main_process:
        return {}
    cfg, train_context = conv.config.export, conv.config.stage3.seq_len
    # The search for `a` runs in the training's precision: bf16 autocast on a GPU (the fp32 weights are saved).
    bf16 = conv.settings.mixed_precision == "bf16"
    with user_errors("export"), torch.autocast(conv.state.device.type, dtype=torch.bfloat16, enabled=bf16):
        return export_checkpoint(
            conv.load_model("stage3", alone=True), conv.tokenizer, conv.out / MODEL_DIR, conv.export_docs(),
            candidates=cfg.logit_scaling_candidates, train_context=train_context, eval_len=cfg.eval_len,
            device=conv.state.device, extend=cfg.logit_scaling_extend, tolerance=cfg.logit_scaling_tolerance,
            copies=cfg.copy_probe, copy_span=cfg.copy_probe_span, run_dir=conv.out,
        )


@contextlib.contextmanager
def unsharded_loading():
    """`from_pretrained` builds the whole model on this process alone, also under DeepSpeed ZeRO-3.

    Once accelerate has selected a ZeRO-3 config (the first stage's Accelerator), transformers builds every model it
    loads under deepspeed.zero.Init, whatever the config's zero3_init_flag: sharded over all processes, a collective.
    A model that one process loads to run by itself would wait there for the others forever (NCCL or gloo time out),
    and its sharded weights would not run outside a DeepSpeed engine anyway."""
    from transformers.integrations import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    if not is_deepspeed_zero3_enabled():
        yield
        return
    from accelerate.state import AcceleratorState

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        AcceleratorState().deepspeed_plugin.set_deepspeed_weakref()  # as accelerate had it, for the stages after


@contextlib.contextmanager
def user_errors(step: str):
    """Selection and export validate their inputs with ValueError: report those as HaloErrors (no traceback)."""
    try:
        yield
    except ValueError as error:
        raise HaloError(f"{step}: {error}") from error


STAGE_RUNNERS = {
    "stage1": stage1.run, "select": _run_select, "stage2": _run_stage2, "stage3": _run_stage3, "export": _run_export,
}


def conversion_entries() -> tuple[str, ...]:
    """What a conversion writes at the top of its --out: all that --overwrite may remove there."""
    from .report import REPORT_JSON, REPORT_MD, REPORT_PNG

    return (CONFIG_FILE, "stages", MODEL_DIR, REPORT_JSON, REPORT_MD, REPORT_PNG, "tensorboard", LOCK_FILE,
            f".{MODEL_DIR}.tmp")


def others(out: Path) -> list[str]:
    """The files and folders in `out` that no conversion wrote."""
    own = conversion_entries()
    return sorted(p.name for p in out.iterdir() if p.name not in own) if out.is_dir() else []


def foreign_entries(out: Path) -> list[str]:
    """others(out) when `out` holds no conversion (no config.yaml and no stages/): a folder of the user's own, which
    neither --resume nor --overwrite may take over."""
    return [] if (out / CONFIG_FILE).exists() or (out / "stages").exists() else others(out)


def remove_for_overwrite(out: Path, whole: bool, first: int) -> None:
    """What --overwrite replaces: the whole conversion (only what a conversion writes; anything else in --out stays),
    or the stages from the first one run on, with the exported model and the report made from them."""
    own = conversion_entries()
    if whole:
        removed = [out / name for name in own if name != LOCK_FILE]
        kept = others(out)
        if kept:
            log.info("--overwrite: %s keeps what no conversion wrote: %s", out, ", ".join(kept))
    else:
        removed = [out / "stages" / name for name in STAGES[first:]]
        removed += [out / name for name in own if name not in (CONFIG_FILE, "stages", "tensorboard", LOCK_FILE)]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class Lock:
    """`out`'s lock, held by this process (`hold_lock`) until `release` (or the end of a `with` block): releasing it
    removes the lock file, so a finished conversion leaves none behind."""

    def __init__(self, path: Path, handle):
        self.path, self.handle = path, handle

    def release(self) -> None:
        if self.handle is None:
            return
        # unlinked while still held: a process that opened this file meanwhile takes the flock only once this one
        # lets go, then finds that the path is no longer its file (hold_lock) and tries again; unlinked after the
        # release, it could remove the file another process had just locked, and a third would lock a new one
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.handle.close()  # (releases the flock)
        self.handle = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_lock(out: Path) -> Lock | None:
    """Take `out`'s lock for this process (the main one of a launch) until its `release` (or the process's exit,
    which leaves the file): HaloError while another process converts there. A no-op where fcntl is missing
    (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    path = out / LOCK_FILE
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise HaloError(f"another hypenet process ({holder or 'pid unknown'}) is writing {out}; wait for it to "
                            "end, or pass another --out") from None
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        mine = os.fstat(handle.fileno())
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        handle.close()  # the holder before removed this file as it let go (Lock.release): lock the one there now
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return Lock(path, handle)


def finished_conversion(out: Path) -> str | None:
    """What `convert` and `export` say of an --out whose export is done ("OUT holds a finished conversion (its model:
    OUT/model)"); None while it is not."""
    if done_info(out, "export") is None:
        return None
    return f"{out} holds a finished conversion (its model: {out / MODEL_DIR})"


def nothing_to_do(out: Path, stages: list[str], resume: bool) -> str | None:
    """What `hypenet export --resume` says, loading nothing, where the export is done already; None elsewhere."""
    finished = finished_conversion(out) if resume and list(stages) == ["export"] else None
    return f"{finished}: its export is done, nothing to do (--overwrite exports it again)" if finished else None


def check_output(config: ConvertConfig, stages: list[str], resume: bool, overwrite: bool,
                 start_from: str | Path | None) -> None:
    """What run_stages checks before it loads anything: HaloError when --out (or --from) does not allow `stages`."""
    if resume and overwrite:
        raise HaloError("pass either --resume (continue) or --overwrite (start again), not both")
    out, whole = Path(config.out), list(stages) == list(STAGES)
    first = STAGES.index(stages[0])
    earlier = list(STAGES[:first])
    if start_from is not None:
        if not earlier or whole:
            raise HaloError("--from starts a single stage after stage 1 (select, stage2, stage3 or export) from the "
                            "stages before it in another conversion")
        check_start_from(Path(start_from), out, config, earlier)
    if out.exists() and not out.is_dir():
        raise HaloError(f"--out {out} is a file; pass a folder")
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise HaloError(f"--out {out} holds files that are not a conversion's ({shown}); pass a new or empty --out "
                        "(--overwrite replaces a conversion, not a folder of other files)")
    if whole:
        existing = [out] if holds_anything(out) else []
    else:
        existing = [out / "stages" / name for name in stages if (out / "stages" / name).exists()]
        # (with --from, check_start_from found them done there)
        # (only HALO's probes swap stage 1's students in: `hypenet select` with another strategy chooses without them)
        needed = [name for name in earlier
                  if name != "stage1" or stages != ["select"] or config.select.strategy == "halo"]
        missing = [name for name in needed if done_info(out, name) is None] if start_from is None else []
        if missing:
            raise HaloError(
                f"{stages[0]} needs the result of {missing[0]} in {out}: run `hypenet {missing[0]} --out {out}` first, "
                "with your --teacher, --data and --set options (or `hypenet convert` for everything)"
            )
    if existing and not (resume or overwrite):
        finished = finished_conversion(out) if "export" in stages else None
        if finished:
            again = "pass another --out, or --overwrite to convert again" if whole else "--overwrite exports it again"
            raise HaloError(f"{finished}; {again}")
        raise HaloError(f"{existing[0]} exists; pass --resume to continue it or --overwrite to replace it")
    if not (whole and overwrite):  # (before anything loads; record_config checks again once --from has copied)
        refusal = saved_settings_refusal(out, config, replaced=tuple(STAGES[first:]) if overwrite else ())
        if refusal:
            raise HaloError(refusal)


def run_stages(config: ConvertConfig, stages: list[str] = STAGES, resume: bool = False, overwrite: bool = False,
               start_from: str | Path | None = None, count_startup: bool = False) -> dict:
    """Run `stages` (all of them: a conversion) into config.out; return the report. See the module docstring.
    `start_from`: another conversion's folder, whose finished stages before `stages` are copied into config.out
    first (`hypenet stage3 --from A --out B --set stage3.lr=...` tries another stage 3 on A's stage 2).
    `count_startup`: this process started for this conversion (the `hypenet` command), so the time from its start to
    the conversion's counts (`startup_time_s`); not in a process that did other things first (a notebook, a test)."""
    check_output(config, stages, resume, overwrite, start_from)
    out, whole = Path(config.out), list(stages) == list(STAGES)
    finished = nothing_to_do(out, stages, resume)
    if finished:  # (before the teacher loads, which takes long for nothing)
        if is_main_rank():
            print(finished)
        return saved_report(out)
    if resume and whole and not holds_anything(out):
        log.warning("--resume: %s holds no conversion yet; starting one from the beginning (check --out if you meant "
                    "to continue another)", out)
    created = not out.exists()
    try:  # before the teacher loads: an --out that cannot be written fails at once (exist_ok: safe on every rank)
        out.mkdir(parents=True, exist_ok=True)
        lock = hold_lock(out) if is_main_rank() else None
    except OSError as error:
        raise HaloError(f"cannot write in the output folder {out} ({error.strerror}); pass another --out") from error
    try:
        return _run_stages(config, stages, resume, overwrite, start_from, count_startup)
    finally:
        if lock is not None:
            lock.release()  # (and removes the lock file)
            if created and not holds_anything(out):  # a conversion stopped before it wrote anything leaves no folder
                with contextlib.suppress(OSError):
                    out.rmdir()


def saved_report(out: Path) -> dict:
    """The report a finished run wrote in `out` (empty where it has none, or it cannot be read)."""
    from .report import REPORT_JSON

    try:
        return json.loads((out / REPORT_JSON).read_text())
    except (OSError, ValueError):
        return {}


def pending_stages(out: Path, stages: list[str], overwrite: bool) -> list[str]:
    """The stages of `stages` an invocation in `out` runs: those not done yet, or all of them with --overwrite."""
    return [name for name in stages if overwrite or done_info(out, name) is None]


def needs_teacher(out: Path, stages: list[str], overwrite: bool) -> bool:
    """Whether an invocation running `stages` in `out` runs the teacher: one of the stages it runs (pending_stages)
    is one that does (TEACHER_STAGES). Stage 3, the export and a finished conversion's --resume need only its
    tokenizer and config, and load no weight."""
    return any(name in TEACHER_STAGES for name in pending_stages(out, stages, overwrite))


def holds_anything(out: Path) -> bool:
    """Whether `out` holds more than a lock: anything a conversion, or a user, put there."""
    return out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())


def _run_stages(config: ConvertConfig, stages: list[str], resume: bool, overwrite: bool,
                start_from: str | Path | None, count_startup: bool = False) -> dict:
    began, startup = time.perf_counter(), command_age() if count_startup else None
    out, whole = Path(config.out), list(stages) == list(STAGES)
    first = STAGES.index(stages[0])
    earlier = list(STAGES[:first])
    conv = Conversion(config, resume=resume, teacher_weights=needs_teacher(out, stages, overwrite))
    pending = pending_stages(out, stages, overwrite)
    if pending:
        conv.corpus  # a bad teacher, tokenizer or corpus fails here, before anything is overwritten
        check_lm_eval_tasks(config, pending)
        check_needle_prompts(conv, pending)
    else:  # every stage asked for is done (`convert --resume` of a finished conversion): the report is written
        # again from what they saved, which needs no data
        log.info("%s: every stage is done; writing the report again without reading the data", out)
    if overwrite and conv.is_main_process:
        remove_for_overwrite(out, whole, first)
    if start_from is not None and conv.is_main_process:
        copy_earlier_stages(Path(start_from), out, earlier)
    conv.state.wait_for_everyone()
    conv.record_config()

    conv.running, conv.loading, conv.startup = list(stages), time.perf_counter() - began, startup
    for name in stages:
        conv.run_stage(name)
    report = conv.report()
    if conv.is_main_process:
        from .report import write_report

        json_path, md_path = write_report(out, report)
        where = f"checkpoint: {report['student_path']}\n" if report["student_path"] else ""
        print(f"{where}report: {json_path} and {md_path}")
    return report


def convert(config: ConvertConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """The whole HALO conversion (`hypenet convert`)."""
    return run_stages(config, STAGES, resume=resume, overwrite=overwrite)
