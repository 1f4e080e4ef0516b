"""The one training loop every HALO stage runs.

A stage hands `train` an `objective`: an nn.Module whose parameters that require grad are what the stage trains
and whose forward(input_ids) returns the loss (frozen teachers live outside it, so they are neither wrapped for
data parallelism nor checkpointed). The loop owns everything else: accelerate (one GPU, DDP, FSDP2 or DeepSpeed,
as `accelerate launch` configures it; under FSDP2 the modules the objective names in `_no_split_modules` are the
shard units (`prepare_fsdp`); bf16 autocast on GPU, fp32 on CPU), AdamW (0.9, 0.95) without weight decay,
a warmup + cosine (or constant) schedule, gradient clipping and accumulation, a tqdm bar with tokens/s and ETA,
the stage's measured tokens/s every tenth of its steps for a caller's estimate (`RunSettings.progress`: the pipeline's
time left of the whole conversion), a JSON-lines loss log, optional TensorBoard, and resumable checkpoints.

Resumption: optimizer step s always trains on batch s of the stage's `PackedChunks` (the data order is a function
of the step), so a run restored from the checkpoint of step s continues exactly where the interrupted one was.
Checkpoints are written to `step-XXXXXXXX.tmp/` and renamed, so a crash never leaves a half-written one. Ctrl-C or
SIGTERM finishes the optimizer step in flight and checkpoints it before stopping (`StopOnSignal`).

Out of memory: with one process and `micro_batch_size` left unset (the whole batch per forward), a forward or
backward that runs out of memory is run again with the micro batch halved (to a divisor of the batch), gradient
accumulation making up the rest: the step is the same step, with the gradients of the failed try discarded and no
weight updated. The micro batch in use is kept in the checkpoints, so a resumed run goes on with it. Set
`micro_batch_size`, or run several processes, and running out of memory stops the stage with what to set instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import functools
import json
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType
from accelerate.utils.memory import clear_device_cache
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..errors import first_line, is_out_of_memory
from .compiling import compiled_layers, layers_to_compile
from .config import HaloError, TrainConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOSS_LOG = "losses.jsonl"


@dataclass
class RunSettings:
    """How to run (the same for every stage), as opposed to what to train (TrainConfig)."""

    checkpoint_every: int = 500
    resume: bool = False
    cpu: bool = True
    mixed_precision: str = "no"  # "bf16" or "no"
    tensorboard_dir: Path | None = None
    after_step: Callable[[int], None] | None = None  # called with the step number after every optimizer step
    # Called on the main process once this run's fourth step is measured, then every tenth of the stage's steps (not
    # after its last: `progress_due`), with (steps done, the stage's steps, tokens/s: `measured_tokens_per_s`). The
    # pipeline estimates the whole conversion's time left from it.
    progress: Callable[[int, int, float], None] | None = None
    compile: bool = False  # torch.compile the layers the objective names (halo/compiling.py)
    deterministic: bool = False  # PyTorch's deterministic algorithms while training (`deterministic_algorithms`)
    # Gather the trained weights into TrainResult.state_dict at the end (a collective under FSDP / ZeRO-3). The
    # pipeline needs them; a throughput benchmark does not.
    gather_weights: bool = True


@dataclass
class TrainResult:
    steps: int
    tokens: int
    # seconds spent in the training loop, summed over interrupted and resumed runs up to the checkpoint each resume
    # went on from (steps run again after a kill count once); building, loading and saving are not in it
    wall_time: float
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    resumed_from: int | None = None
    state_dict: dict | None = None  # the trained objective's full weights (main process only; gathered under FSDP)
    processes: int = 1
    distributed: str = "NO"  # accelerate's distributed type: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED
    zero_stage: int | None = None  # the ZeRO stage DeepSpeed ran (None when not under DeepSpeed)
    # (first, last) micro batch when running out of memory made it smaller (None when it kept its size)
    micro_batch_shrunk: tuple[int, int] | None = None

    def weights(self, prefix: str) -> dict | None:
        """The trained weights of the objective's submodule `prefix` (e.g. "student"), with names relative to it
        (None on processes other than the main one)."""
        if self.state_dict is None:
            return None
        start = prefix + "."
        return {k[len(start) :]: v for k, v in self.state_dict.items() if k.startswith(start)}

    def summary(self, max_points: int = 200) -> dict:
        """What the report shows: budget, the training loop's time (`training_time_s`, see `wall_time`; the
        pipeline adds the stage's whole `wall_time_s`), the mean loss of the first and last 10% of steps, a loss
        curve, and how it ran (processes, accelerate's distributed type and, under DeepSpeed, the ZeRO stage)."""
        tenth = max(1, len(self.losses) // 10)
        every = max(1, math.ceil(len(self.losses) / max_points))
        summary = {
            "steps": self.steps,
            "tokens": self.tokens,
            "training_time_s": round(self.wall_time, 2),
            "initial_loss": sum(self.losses[:tenth]) / tenth,
            "final_loss": sum(self.losses[-tenth:]) / tenth,
            "losses": [[s + 1, self.losses[s]] for s in range(0, len(self.losses), every)],
            "processes": self.processes,
            "distributed": self.distributed,
        }
        if self.zero_stage is not None:
            summary["zero_stage"] = self.zero_stage
        if self.micro_batch_shrunk is not None:
            summary["micro_batch_shrunk"] = list(self.micro_batch_shrunk)
        return summary


def lr_lambda(config: TrainConfig, total_steps: int):
    """Multiplier of the peak lr at a step: linear warmup, then cosine down to min_lr (or constant)."""
    floor = config.min_lr / config.lr

    def multiplier(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


# The run's step after which its throughput is first reported: three steps measured after the warm-up one. On the
# GPU the second step alone could still be slow (stage 1 of the forty-seventh lease: 52.5K tokens/s at step 2, 80K
# at steps 3-4, ~92K after), and the estimate made from it said 29 min where 15.6 were left.
FIRST_PROGRESS_STEP = 4


def progress_due(trained: int, done: int, steps: int) -> bool:
    """Whether to report the measured throughput after step `done` of the stage's `steps`, the `trained`-th step of
    this run: once FIRST_PROGRESS_STEP steps are trained (the first is warm-up), then at every tenth of the stage,
    but not at its last step (nothing of it is left to estimate)."""
    return done < steps and (trained == FIRST_PROGRESS_STEP
                             or (trained > FIRST_PROGRESS_STEP and done % math.ceil(steps / 10) == 0))


def measured_tokens_per_s(tokens_per_step: int, step_seconds: list[float]) -> float:
    """Tokens per second at the median time of this run's last 20 steps, its first (warm-up, compilation) left out
    when there are more."""
    recent = (step_seconds[1:] if len(step_seconds) > 1 else step_seconds)[-20:]
    return tokens_per_step / statistics.median(recent)


def log_above_bar():
    """Log lines printed above the progress bar instead of through it, where the root logger prints to the console
    (as the `hypenet` command sets it up); otherwise logging is left as it is."""
    console = any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
                  for h in logging.root.handlers)
    return logging_redirect_tqdm(tqdm_class=tqdm) if console else contextlib.nullcontext()


def latest_checkpoint(stage_dir: Path) -> Path | None:
    done = sorted(p for p in (stage_dir / CHECKPOINTS).glob("step-*") if p.suffix != ".tmp")
    return done[-1] if done else None


def os_signal_handler(sig: int) -> int | None:
    """The handler the OS holds for a signal (its address; 0 is the default action, 1 ignored), read by sigaction(2)
    without changing it: it differs from `signal.getsignal` when C code has replaced Python's. None where it cannot
    be read (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = _libc()
    action = ctypes.create_string_buffer(256)  # a struct sigaction; its first member is the handler
    if libc is None or libc.sigaction(sig, None, action) != 0:
        return None
    return ctypes.c_void_p.from_buffer(action).value or 0


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p), ("dli_sname", ctypes.c_char_p),
                ("dli_saddr", ctypes.c_void_p)]


def code_location(address: int) -> str | None:
    """Where a code address lies, read by dladdr(3): "in FILE", with the nearest exported symbol at or before it
    ("SYMBOL+0xOFF") where there is one, so that a handler some library installed names that library. None where the
    address is in no loaded file, or dladdr is missing (not Linux or glibc)."""
    libc = _libc()
    dladdr = getattr(libc, "dladdr", None) if libc is not None else None
    if dladdr is None:
        return None
    dladdr.argtypes, dladdr.restype = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)], ctypes.c_int
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    where = f"in {info.dli_fname.decode(errors='replace')}"
    if info.dli_sname and info.dli_saddr:
        where += f", {info.dli_sname.decode(errors='replace')}+{address - info.dli_saddr:#x}"
    return where


def describe_handler(sig: int) -> str:
    at = os_signal_handler(sig)
    os_side = {None: "", 0: ", the OS: the default action", 1: ", the OS: ignored"}.get(at)
    if os_side is None:
        where = code_location(at)
        os_side = f", the OS: {at:#x}" + (f" ({where})" if where else "")
    return f"Python: {signal.getsignal(sig)!r}{os_side}"


class StopOnSignal:
    """SIGINT or SIGTERM during training (Ctrl-C, `timeout`, a scheduler's preemption): the optimizer step in flight
    finishes, a checkpoint of it is written, and training stops with KeyboardInterrupt, so that `--resume` loses
    nothing. A second signal at least `REPEAT_S` later stops at once (from the last checkpoint); one sooner is the
    same stop delivered twice: GNU `timeout` signals its command and then the command's process group, so the
    command gets the signal twice within microseconds, and taken as "again" it would stop without the step's
    checkpoint.
    Handlers are installed only in the main thread and restored on exit. With several processes, one process's
    signal stops them all at the same step. A step that fails once the signal has come (a compiler's subprocess in
    the same process group died of it) stops with the checkpoint of the step before (`_stop_in_failed_step`).
    With the environment variable HYPENET_SIGNAL_TRACE set and not 0, each signal's arrival also writes every
    thread's stack to stderr (`faulthandler`, at the C level, before Python's handler runs): a stop that ends without
    the handler's warning then shows whether the signal reached the process and where it was. A diagnostic only:
    faulthandler reads the other threads' frames while they run, and in one GPU conversion it so crashed the process
    (a segmentation fault in the middle of the stacks, results/gpu_convert/determinism/lease55/)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_S = 1.0
    TRACE_VARIABLE = "HYPENET_SIGNAL_TRACE"
    REPLACED_LOGGED = 3  # replaced handlers named in the log; later ones only counted

    def __init__(self, name: str):
        self.name, self.received, self._previous, self._first, self._traced = name, None, {}, 0.0, False
        self._installed: dict[int, int | None] = {}  # the OS-level handler of each signal once installed
        self._replaced = 0  # steps after which watch() found a handler replaced

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}  # (_install sets the stop's)
            self._traced = (os.environ.get(self.TRACE_VARIABLE, "") not in ("", "0") and sys.__stderr__ is not None
                            and hasattr(faulthandler, "register"))
            self._install()
        return self

    def _install(self) -> None:
        for sig in self.SIGNALS:
            if self._traced:  # (registered again: faulthandler puts its handler back in the OS only when it is not)
                faulthandler.unregister(sig)
            signal.signal(sig, self._handle)
            if self._traced:  # (chained: Python's handler above runs after it)
                faulthandler.register(sig, file=sys.__stderr__, all_threads=True, chain=True)
        self._installed = {sig: os_signal_handler(sig) for sig in self.SIGNALS}

    def watch(self, step: int) -> None:
        """Called after each step: if a library has put another handler in the stop's place since (in Python, or in
        C where Python's `signal.getsignal` does not see it), say so in the log and install the stop's again. A signal
        that finds the default action there, or LLVM's handler that Triton's compiler installs, ends the process at
        once, without the step's checkpoint or a word in the log, as five GPU leases' deadline stops ended. On an
        H100, LLVM's handler so lost 16 of 56 stops without this watch and none of 56 with it
        (results/gpu_convert/stop_resume/gpu_triton/)."""
        if not self._previous:
            return
        replaced = [sig for sig in self.SIGNALS
                    if signal.getsignal(sig) != self._handle or os_signal_handler(sig) != self._installed.get(sig)]
        if replaced:
            self._replaced += 1
            if self._replaced <= self.REPLACED_LOGGED:
                # Triton's compiler (LLVM, in libtriton.so) puts its handlers in place of both the first time it
                # compiles a kernel in a process: expected on a GPU, so said at INFO (results/gpu_convert/stop_resume/)
                triton = all(signal.getsignal(sig) == self._handle
                             and "libtriton" in (code_location(os_signal_handler(sig) or 0) or "") for sig in replaced)
                log.log(logging.INFO if triton else logging.WARNING,
                        "%s: after step %d the handler of %s had been replaced (%s)%s; installing the stop's again%s",
                        self.name, step, ", ".join(signal.Signals(sig).name for sig in replaced),
                        "; ".join(f"{signal.Signals(sig).name}: {describe_handler(sig)}" for sig in replaced),
                        " by Triton's compiler (LLVM's handlers, set as it compiled a kernel)" if triton else "",
                        " (later replacements are counted, not logged)"
                        if self._replaced == self.REPLACED_LOGGED else "")
            self._install()

    def __exit__(self, *exc) -> None:
        if self._replaced > self.REPLACED_LOGGED:
            log.warning("%s: the stop's handlers were replaced and installed again %d times", self.name, self._replaced)
        for sig, handler in self._previous.items():
            if self._traced:
                faulthandler.unregister(sig)
            signal.signal(sig, handler)
        self._previous, self._traced, self._replaced = {}, False, 0

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.received is not None:
            if now - self._first < self.REPEAT_S:  # the first signal's twin (see the docstring)
                log.info("%s: %s again %.6f s after the first: the same stop delivered twice, one stop", self.name,
                         signal.Signals(signum).name, now - self._first)
                return
            self.__exit__()
            raise KeyboardInterrupt
        self.received, self._first = signum, now
        log.warning("%s: %s received: stopping after this optimizer step, once its checkpoint is written (signal "
                    "again, a second or more later, to stop at once)", self.name, signal.Signals(signum).name)

    def requested(self, acc: Accelerator) -> bool:
        if acc.num_processes == 1:
            return self.received is not None
        flag = torch.tensor(float(self.received is not None), device=acc.device)
        return bool(acc.reduce(flag, reduction="sum").item() > 0)


def prepare_fsdp(acc: Accelerator, objective: nn.Module, name: str) -> None:
    """Under FSDP2, before accelerate shards the objective:

    - Shard units: the modules the objective names in `_no_split_modules` (its decoder layers, or stage 1's
      per-layer students), each all-gathered only while it runs. accelerate would look for class names in the launch
      config or a HF model's `_no_split_modules`; the objectives are not HF models, and one accelerate state serves
      every stage of a conversion, so the units are set again for each stage. A size-based wrap policy from the
      launch config is kept as it is.
    - Mixed precision as on one GPU: fp32 master weights, computed in bf16 (gathered in bf16), gradients averaged
      in fp32, and no cast of what a unit returns or takes: the residual stream and the loss stay fp32. (accelerate's
      default casts every unit's output to bf16, the loss too: on the GPU that rounded the losses to bf16.)
    """
    if acc.distributed_type != DistributedType.FSDP:
        return
    plugin = acc.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise HaloError(f"{name}: FSDP version {plugin.fsdp_version} is not supported; set fsdp_version: 2 in the "
                        "accelerate config (configs/accelerate-fsdp.yaml)")
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

    if acc.mixed_precision == "bf16":
        plugin.mixed_precision_policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=None, cast_forward_inputs=False)
    policy = plugin.auto_wrap_policy
    if (policy.func if isinstance(policy, functools.partial) else policy) is size_based_auto_wrap_policy:
        return
    units = list(getattr(objective, "_no_split_modules", None) or [])
    plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = transformer_auto_wrap_policy, units
    log.info("%s: FSDP2 shard units: %s (and the rest as one root unit)", name, ", ".join(units) or "none")


def configure_deepspeed(ds_config: dict, config: TrainConfig, micro: int, accumulation: int, processes: int) -> None:
    """Set this stage's batch, accumulation and clipping in the DeepSpeed config (in place).

    One accelerate DeepSpeed plugin serves every stage of a conversion. accelerate fills only the values left "auto",
    so the first stage's would stay for the next ones: a stage with another batch size would fail DeepSpeed's batch
    check, and one with another accumulation or clipping would silently run with the first stage's. DeepSpeed clips
    the gradients itself (accelerate's clip_grad_norm_ does nothing under it), and 0 turns clipping off, as here."""
    ds_config.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accumulation,
                     train_batch_size=micro * accumulation * processes, gradient_clipping=float(config.grad_clip))


def smaller_micro_batch(per_process: int, micro: int) -> int | None:
    """The largest divisor of the batch each process takes that is at most half of `micro` (None below 2)."""
    return next((d for d in range(micro // 2, 0, -1) if per_process % d == 0), None)


def _accumulated_loss(acc: Accelerator, model: nn.Module, batch: torch.Tensor, micro: int,
                      accumulation: int) -> torch.Tensor:
    """Forward and backward of one step's batch, `micro` sequences at a time; the step's mean loss."""
    step_loss = torch.zeros((), device=acc.device)
    for input_ids in batch.split(micro):
        with acc.accumulate(model):
            loss = model(input_ids)
            acc.backward(loss)
            step_loss += loss.detach().float() / accumulation
    return step_loss


def _micro_batch_size(config: TrainConfig, processes: int, name: str) -> tuple[int, int]:
    """(sequences per forward, forwards per step) on each process."""
    if config.batch_size % processes:
        raise HaloError(f"{name}.batch_size ({config.batch_size}) must be a multiple of the number of processes "
                        f"({processes})")
    per_process = config.batch_size // processes
    micro = config.micro_batch_size or per_process
    if per_process % micro:
        raise HaloError(
            f"{name}.micro_batch_size ({micro}) must divide the batch each process takes per step "
            f"({config.batch_size} / {processes} processes = {per_process})"
        )
    return micro, per_process // micro


def loss_records(stage_dir: Path) -> list[dict]:
    """The records of a stage's LOSS_LOG, in order (none when it has none; a line a killed run cut short is left
    out)."""
    records = []
    with contextlib.suppress(FileNotFoundError):
        for line in (stage_dir / LOSS_LOG).read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


class LossLog:
    """Per-step losses as JSON lines (append-only, so a resumed run shows where it picked up) and TensorBoard."""

    def __init__(self, stage_dir: Path, name: str, enabled: bool, tensorboard_dir: Path | None):
        self.path, self.name, self.enabled, self.writer = stage_dir / LOSS_LOG, name, enabled, None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard logging needs the tensorboard package: pip install tensorboard")
            else:
                self.writer = SummaryWriter(str(tensorboard_dir / name))

    def write(self, **record) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "loss" in record:
            self.writer.add_scalar(f"{self.name}/loss", record["loss"], record["step"])
            self.writer.add_scalar(f"{self.name}/lr", record["lr"], record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(name: str, objective: nn.Module, config: TrainConfig, chunks, stage_dir: Path,
          run: RunSettings) -> TrainResult:
    """Train `objective` for config.steps() optimizer steps on `chunks` (a hypenet.data.PackedChunks)."""
    layers = layers_to_compile(objective) if run.compile else []
    if run.compile and not layers:
        log.info("%s: compile is on, but this stage's objective names no layers to compile; it runs eagerly", name)
    with (deterministic_algorithms(run.deterministic, name), compiled_layers(layers), StopOnSignal(name) as stop,
          log_above_bar()):
        return _train(name, objective, config, chunks, Path(stage_dir), run, stop)


# cuBLAS repeats its results only with a fixed workspace per stream (CUDA's documentation on reproducibility); PyTorch's
# deterministic mode refuses cuBLAS matmuls on CUDA without this setting.
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, name: str = "training"):
    """With `enabled`: PyTorch's deterministic algorithms (strict: an op that has none raises), cuDNN's deterministic
    kernels without autotuning for the block, the previous settings back after it; and cuBLAS's fixed workspace
    (CUBLAS_WORKSPACE_CONFIG, when unset; it stays set, as cuBLAS's workspaces may outlive the block). Triton kernels
    (flash-linear-attention's) are outside PyTorch's switch: the ones this package runs have no atomic adds, but their
    autotuner could pick other tile sizes in another process (on one H200, two processes logged the same 100 stage-2
    losses and a third the same through its warm-up: results/gpu_convert/README.md, "Thirty-sixth lease"). An op
    without a deterministic implementation becomes a HaloError that names it."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    except RuntimeError as error:
        if "does not have a deterministic implementation" not in str(error):
            raise
        raise HaloError(f"{name}: deterministic is on, and an op has no deterministic implementation: {error}. Run "
                        "without it (drop --set deterministic=true) to train with that op.") from error
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def _train(name: str, objective: nn.Module, config: TrainConfig, chunks, stage_dir: Path,
           run: RunSettings, stop: StopOnSignal) -> TrainResult:
    steps = config.steps()
    micro, accumulation = _micro_batch_size(config, PartialState(cpu=run.cpu).num_processes, name)
    acc = Accelerator(cpu=run.cpu, mixed_precision=run.mixed_precision, gradient_accumulation_steps=accumulation)
    if acc.state.deepspeed_plugin is not None:
        configure_deepspeed(acc.state.deepspeed_plugin.deepspeed_config, config, micro, accumulation, acc.num_processes)
    # (a generator: no list keeps the unsharded weights alive once FSDP has sharded them)
    optimizer = torch.optim.AdamW((p for p in objective.parameters() if p.requires_grad), lr=config.lr,
                                  betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, steps))
    prepare_fsdp(acc, objective, name)
    model, optimizer = acc.prepare(objective, optimizer)
    # the stage DeepSpeed's engine runs (the plugin's zero_stage says 2 when a DeepSpeed config file leaves the stage
    # out, and DeepSpeed then runs stage 0)
    zero_stage = model.zero_optimization_stage() if acc.distributed_type == DistributedType.DEEPSPEED else None
    ran_on = acc.distributed_type.value + (f" ZeRO-{zero_stage}" if zero_stage is not None else "")
    log.info("%s: %d process(es), %s, mixed precision %s, %d step(s) of %d x %d tokens", name, acc.num_processes,
             ran_on, run.mixed_precision, steps, config.batch_size, config.seq_len)
    acc.register_for_checkpointing(scheduler)  # stepped here once per optimizer step, not through accelerate

    per_process, first_micro = micro * accumulation, micro
    # the micro batch may shrink when a step runs out of memory: one process, no micro batch set (see the docstring)
    shrinkable = config.micro_batch_size is None and acc.distributed_type == DistributedType.NO
    start, losses, wall_before, resumed_from = 0, [], 0.0, None
    checkpoint = latest_checkpoint(stage_dir) if run.resume else None
    if checkpoint is not None:
        acc.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        start, losses, wall_before, resumed_from = state["step"], state["losses"], state["wall_time"], state["step"]
        # the interrupted run had shrunk its micro batch: go on with that one, if each process takes the batch it took
        # (a run resumed on another number of processes splits the batch its own way)
        if shrinkable and state.get("per_process") == per_process and state["micro_batch_size"] < micro:
            micro = state["micro_batch_size"]
            accumulation = acc.gradient_accumulation_steps = per_process // micro
        # load_state restores accelerate's count of micro steps, whose remainder by the accumulation says when the
        # optimizer steps; a checkpoint is taken after a whole step, so the next micro step begins one (with another
        # accumulation the restored count would skip optimizer steps)
        acc.step = 0
    if acc.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
    if run.resume and checkpoint is None and acc.is_main_process:
        lost = len({record["step"] for record in loss_records(stage_dir) if "loss" in record})
        if lost:  # (a run killed before its first checkpoint: every `checkpoint_every` steps and at a stop)
            log.warning("%s: --resume found no checkpoint of the run before, which had logged %d step(s) and ended "
                        "before its first checkpoint (killed, or failed); starting the stage again at step 1", name,
                        lost)
    loss_log = LossLog(stage_dir, name, acc.is_main_process, run.tensorboard_dir)
    if resumed_from is not None:
        loss_log.write(event="resume", step=resumed_from)
        log.info("%s: resuming from %s", name, checkpoint)

    tokens_per_step = config.batch_size * config.seq_len
    batches = chunks.batches(
        config.batch_size, start_step=start, num_steps=steps - start,
        rank=acc.process_index, world_size=acc.num_processes,
    )
    bar = tqdm(total=steps, initial=start, desc=name, unit="step", disable=not acc.is_main_process, dynamic_ncols=True)
    model.train()
    began = time.perf_counter()
    step_seconds = []  # this run's
    stopping = False  # (a run resumed at its last step trains no step)

    def trainer_state(done: int) -> dict:  # what a checkpoint after `done` steps records beside the weights
        return {"step": done, "losses": losses, "wall_time": wall_before + time.perf_counter() - began,
                "micro_batch_size": micro, "per_process": per_process}

    for step, batch in enumerate(batches, start=start):
        tick = time.perf_counter()
        batch = batch.to(acc.device)
        while True:
            try:
                step_loss = _accumulated_loss(acc, model, batch, micro, accumulation)
                break
            except Exception as error:  # torch.OutOfMemoryError is a RuntimeError
                if stop.received is not None:
                    _stop_in_failed_step(name, error, acc, stage_dir, step, start, optimizer, bar, loss_log,
                                         trainer_state(step))
                if not (isinstance(error, RuntimeError) and is_out_of_memory(error)):
                    raise
                reason = first_line(error)  # torch's or a Triton kernel's (the log says which)
                smaller = smaller_micro_batch(per_process, micro) if shrinkable else None
                if smaller is None:
                    hint = smaller_micro_batch(per_process, micro)
                    what = (f"Set --set {name}.micro_batch_size={hint} (a divisor of the {per_process} sequences "
                            f"each process takes per step)" if hint else
                            f"Even one sequence does not fit: shorten {name}.seq_len or shard the model over more GPUs "
                            "(FSDP2 or DeepSpeed, see the README)")
                    raise HaloError(
                        f"{name}: out of memory at step {step + 1} with {micro} x {config.seq_len} tokens per forward "
                        f"({reason}). {what}, then rerun with --resume."
                    ) from error
            # (out of the except block: the failed try's activations are free now) its gradients are discarded
            optimizer.zero_grad(set_to_none=True)
            clear_device_cache(garbage_collection=True)
            log.warning("%s: out of memory at step %d with micro batch %d (%s); going on with %d (--set "
                        "%s.micro_batch_size=%d starts there)", name, step + 1, micro, reason, smaller, name, smaller)
            micro, accumulation = smaller, per_process // smaller
            acc.gradient_accumulation_steps, acc.step = accumulation, 0
            loss_log.write(event="micro_batch", step=step + 1, micro_batch_size=micro, error=reason)
        step_loss = acc.reduce(step_loss, reduction="mean").item()
        if not math.isfinite(step_loss):
            last = latest_checkpoint(stage_dir)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            # (not --resume: a resumed stage keeps its settings, lr included; the stage starts again with the new one)
            again = (f" and run the stage again: hypenet {name} --out {stage_dir.parent.parent} --overwrite --set "
                     f"{name}.lr=LOWER (then `hypenet convert --out {stage_dir.parent.parent} --resume` for the stages "
                     "after it)" if stage_dir.parent.name == "stages" else "")
            raise HaloError(
                f"{name}: the loss is {step_loss} at step {step + 1}; stopped before updating the weights ({kept}). "
                f"Lower {name}.lr (or check the data){again}."
            )
        if config.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), config.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)

        done = step + 1
        seconds = time.perf_counter() - tick
        loss_log.write(step=done, loss=step_loss, lr=lr, tokens=done * tokens_per_step, seconds=round(seconds, 4))
        bar.set_postfix(loss=f"{step_loss:.4g}", tok_s=f"{tokens_per_step / seconds:,.0f}", refresh=False)
        bar.update(1)
        step_seconds.append(seconds)
        if run.progress is not None and acc.is_main_process and progress_due(done - start, done, steps):
            run.progress(done, steps, measured_tokens_per_s(tokens_per_step, step_seconds))
        if run.after_step is not None:
            run.after_step(done)
        stop.watch(done)
        stopping = stop.requested(acc)
        if (done % run.checkpoint_every == 0 and done < steps) or stopping:
            saved = save_checkpoint(acc, stage_dir, trainer_state(done))
        if stopping:
            log.warning("%s: stopped by signal after step %d; checkpoint %s", name, done, saved)
            break
    bar.close()
    loss_log.close()
    if stopping:
        raise KeyboardInterrupt
    wall = wall_before + time.perf_counter() - began
    state_dict = gather_state_dict(acc, model) if run.gather_weights else None
    acc.wait_for_everyone()
    return TrainResult(steps, steps * tokens_per_step, wall, losses, resumed_from,
                       state_dict if acc.is_main_process else None, acc.num_processes, acc.distributed_type.value,
                       zero_stage, (first_micro, micro) if micro != first_micro else None)


def _stop_in_failed_step(name: str, error: Exception, acc: Accelerator, stage_dir: Path, step: int, start: int,
                         optimizer, bar, loss_log: LossLog, state: dict) -> None:
    """A step failed after a stop signal came: the signal reached a subprocess of the step too (Ctrl-C and GNU
    `timeout` signal the whole process group), such as Triton's or Inductor's compiler, which died of it. The weights
    are still those after the last finished step (`step` of them), so that is the stop's checkpoint: written on one
    process when this run finished a step (with several processes the others may wait in a collective, so none is
    written; `--resume` then goes on from the last one). Raises KeyboardInterrupt, as a stop does."""
    optimizer.zero_grad(set_to_none=True)  # the failed step's partial gradients
    saved = latest_checkpoint(stage_dir)
    if step > start and acc.num_processes == 1:
        saved = save_checkpoint(acc, stage_dir, state)
    log.warning("%s: stopped by signal during step %d, which failed as the signal came (%s: %s; a subprocess such as "
                "a kernel compiler gets the same signal); %s", name, step + 1, type(error).__name__, first_line(error),
                f"checkpoint {saved}" if saved else "no checkpoint yet")
    bar.close()
    loss_log.close()
    raise KeyboardInterrupt from error


def gather_state_dict(acc: Accelerator, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The trained objective's full weights on the main process (None on the others); a collective under FSDP and
    DeepSpeed, so every process calls it.

    Under DeepSpeed the trained weights are its fp32 master copies: the module's own are bf16 under mixed precision
    and, under ZeRO-3, shards. accelerate's own gathering would round them to 16 bits, and under ZeRO-3 refuses
    unless the launch config sets `zero3_save_16bit_model`; the next stage would start from rounded weights."""
    if acc.distributed_type != DistributedType.DEEPSPEED:
        return acc.get_state_dict(model)
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    full, seen = {}, {}
    for key, tensor in acc.unwrap_model(model).state_dict(keep_vars=True).items():
        if id(tensor) not in seen:  # tied weights: one gather, every key
            value = safe_get_full_fp32_param(tensor) if tensor.requires_grad else None
            if value is None:  # frozen weights and buffers: the module's own, gathered under ZeRO-3
                with deepspeed.zero.GatheredParameters([tensor] if isinstance(tensor, nn.Parameter) else []):
                    value = tensor.detach().clone()
            seen[id(tensor)] = value.cpu() if acc.is_main_process else None
        full[key] = seen[id(tensor)]
    return full if acc.is_main_process else None


def save_checkpoint(acc: Accelerator, stage_dir: Path, state: dict) -> Path:
    """Write the trained state, optimizer, scheduler and RNG to checkpoints/step-N atomically; drop older ones."""
    root = stage_dir / CHECKPOINTS
    final = root / f"step-{state['step']:08d}"
    tmp = final.with_suffix(".tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp), safe_serialization=False)  # torch.save keeps tied weights (safetensors drops them)
        # every process writes its own RNG state into tmp: rename only once all have (else a late one makes tmp
        # again, and the checkpoint lacks its file)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps(state))
    except (OSError, RuntimeError) as error:
        raise disk_full(error, tmp, state["step"]) or error
    if acc.is_main_process:
        os.replace(tmp, final)
        for older in root.glob("step-*"):
            if older != final:
                shutil.rmtree(older, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def disk_full(error: BaseException, tmp: Path, step: int) -> HaloError | None:
    """The error to stop with when a checkpoint could not be written for want of disk space (torch's writer says
    "unexpected pos" where the OS says ENOSPC), after removing the half-written one; None for any other error."""
    if not (getattr(error, "errno", None) == errno.ENOSPC or "unexpected pos" in str(error)
            or "No space left" in str(error)):
        return None
    shutil.rmtree(tmp, ignore_errors=True)
    kept = sorted(p.name for p in tmp.parent.glob("step-*") if p.suffix != ".tmp")
    free = shutil.disk_usage(tmp.parent).free / 2**30
    return HaloError(f"the disk holding {tmp.parent} ran out of space while saving the checkpoint of step {step} "
                     f"({free:.2f} GiB free now; {first_line(error)}); the half-written checkpoint is removed"
                     + (f", {kept[-1]} is kept" if kept else "") + ". Free some space, then continue with --resume.")


def remove_checkpoints(stage_dir: Path) -> None:
    """Called once a stage's result is saved: its checkpoints (optimizer states: twice the weights) are dead weight."""
    shutil.rmtree(Path(stage_dir) / CHECKPOINTS, ignore_errors=True)
