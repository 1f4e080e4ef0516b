"""`hypenet bench`: prefill and decode speed of HypeNet (fast engine) against its teacher (transformers and engine).

For each model (named shape with random weights, or a checkpoint) and batch size, one engine is built for the
largest context (compile + CUDA graph once), then for every context:
- prefill: where asked, the prompt is prefilled for real (chunked) and timed; elsewhere the cache is filled with
  random keys/values/states, which decodes exactly as fast (decode reads the same bytes whatever they hold);
- decode: `warmup` steps, then the median of `decode_tokens` timed steps (CUDA events; each step is one token per
  row, greedy sampling included);
- the floor: bytes a step must read (weights + filled KV cache + recurrent states) over the copy bandwidth
  measured at the start of the same run, and the ratio of the measured step to it.
Teacher models also run through transformers' own `generate` (SDPA, its default dynamic cache): prefill time is
the time to the first token, time per token the median gap between later tokens.
Every case is guarded: running out of memory is reported as "does not fit", and cases that would overrun the time
budget are skipped with that reason. Results are written after every case (JSON, markdown, plot).
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import first_line, is_out_of_memory
from ..eval.cli import model_label
from ..fast import DEFAULT_PREFILL_CHUNK, FastHypeNet
from ..fast.cli import DTYPES, load_hypenet
from ..fast.engine import MAX_AUTOTUNE
from ..machine import machine_info
from ..units import length_label
from . import measure
from .memory import GB, GIB
from .profile import profile_calls
from .shapes import HYPENET_SHAPES, TEACHER_SHAPES, hypenet_config, random_model, teacher_config

# Rough rates for the time-budget guess only (H200 bf16: attention kernels / dense matmuls), never reported. A slower
# device (a CPU, a smaller GPU) scales both down by its measured matmul rate (Bench.run).
_ASSUMED_ATTENTION_FLOPS, _ASSUMED_MATMUL_FLOPS, _ASSUMED_SETUP_S = 4.5e14, 5e14, 90.0
PROFILED_STEPS = 5  # decode steps under the profiler per case (--profile), after the timed ones


@dataclass
class BenchSettings:
    models: list[str]
    contexts: list[int]
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    prefill_contexts: list[int] = field(default_factory=list)
    teacher_prefill_contexts: list[int] = field(default_factory=list)  # the same, for teachers in the fast engine
    transformers_contexts: list[int] = field(default_factory=list)
    decode_tokens: int = 32
    warmup_tokens: int = 4
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    device: str = "cuda"
    dtype: str = "bf16"
    compile: bool | None = None  # None: the engine's default (on for CUDA)
    cuda_graph: bool | None = None
    fused_lightning_step: bool = True  # False: the lightning recurrence compiled inline (for comparison)
    max_autotune: bool = False  # compile the decode step with fast.engine.MAX_AUTOTUNE
    gemv: str = "auto"  # batch-1 decode projections: "triton" (fast.gemv's kernel; auto on CUDA) or "cublas"
    gemv_fusion: str = "norm,swiglu,residual"  # with the Triton kernel: the work run inside it (as FastHypeNet; "none")
    # the decode step's kernels launched with programmatic dependent launch: "auto" (wherever the GPU can),
    # True or False (FastHypeNet(pdl=)); each result row records what its engine did ("pdl")
    pdl: bool | str = "auto"
    profile: bool = False  # profile a few decode steps per case: profile_<model>_b<batch>_<context>.txt
    time_budget_s: float = 480.0
    out: Path = Path("runs/bench")


class ModelSource:
    """A named shape (random weights) or a model spec: a HypeNet checkpoint, or a teacher (checkpoint, hub id, .gguf)
    that the fast engine runs as the equivalent all-attention HypeNet and transformers runs as itself."""

    def __init__(self, spec: str, device: torch.device, dtype: torch.dtype):
        self.spec, self.device, self.dtype = spec, device, dtype
        self.named = spec in HYPENET_SHAPES or spec in TEACHER_SHAPES
        if self.named:
            self.is_teacher = spec in TEACHER_SHAPES
        else:
            from transformers import AutoConfig

            path = Path(spec)
            self.is_teacher = not ((path / "config.json").is_file() and
                                   AutoConfig.from_pretrained(path, trust_remote_code=True).model_type == "hypenet")
        self.label = spec if self.named else model_label(spec)  # as hypenet eval names it: RUN for RUN/model

    def transformers_model(self):
        if self.named:
            return random_model(teacher_config(self.spec), self.device, self.dtype)
        from ..teachers import load_teacher

        return load_teacher(self.spec, dtype=self.dtype, device=self.device)[0]

    def hypenet_model(self):
        if self.named:
            return random_model(hypenet_config(self.spec), self.device, self.dtype)
        return load_hypenet(self.spec, self.dtype, self.device)[0]


class Bench:
    def __init__(self, settings: BenchSettings):
        self.settings = settings
        self.device = torch.device(settings.device)
        self.dtype = getattr(torch, DTYPES[settings.dtype])
        self.deadline = time.monotonic() + settings.time_budget_s
        self.results: list[dict] = []
        self.meta = {"command": " ".join(sys.argv), "settings": _jsonable(asdict(settings)),
                     **machine_info(self.device)}

    # ------------------------------------------------------------------ driver

    def run(self) -> dict:
        s = self.settings
        self.meta["bandwidth_gbps"] = measure.copy_bandwidth(self.device) / GB
        self.meta["matmul_tflops"] = measure.matmul_flops(self.device, self.dtype) / 1e12
        self.write()
        for spec in s.models:
            source = ModelSource(spec, self.device, self.dtype)
            for batch in s.batch_sizes:
                self.engine_cases(source, batch)
            if source.is_teacher and s.transformers_contexts:
                for batch in s.batch_sizes:
                    self.transformers_cases(source, batch)
            self.write(plot=True)
        return self.write(plot=True)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, row: dict) -> None:
        self.results.append(row)
        self.write()
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items() if v is not None}
        print(json.dumps(shown), flush=True)

    def write(self, plot: bool = False) -> dict:
        """Write the report (after every case, so that a run cut short keeps what it measured; the plot less often)."""
        from .report import write_report

        return write_report({**self.meta, "results": self.results}, self.settings.out, plot=plot)

    def base_row(self, source: ModelSource, engine: str, batch: int, context: int) -> dict:
        return {"model": f"{source.label} ({engine})", "shape": source.label, "engine": engine,
                "kind": "teacher" if source.is_teacher else "hypenet", "batch_size": batch, "context_len": context}

    # ------------------------------------------------------------------ fast engine

    def engine_cases(self, source: ModelSource, batch: int) -> None:
        s = self.settings
        prefill_contexts = s.teacher_prefill_contexts if source.is_teacher else s.prefill_contexts
        contexts = sorted(set(s.contexts) | {c for c in prefill_contexts if c <= max(s.contexts)})
        if self.remaining() < _ASSUMED_SETUP_S:
            for context in contexts:
                self.record({**self.base_row(source, "fast", batch, context), "status":
                             f"skipped: time budget (a model's setup needs ~{_ASSUMED_SETUP_S:.0f} s, "
                             f"{max(0, self.remaining()):.0f} s left; raise --time-budget-s)"})
            return
        model = engine = None
        try:
            model = source.hypenet_model()
            engine, setup_s, contexts = self.build_engine(model, source, batch, contexts)
            compiled = engine.compiled
            warmup_s = None
            if any(c in prefill_contexts for c in contexts):  # kernel autotuning (fla) stays out of the timings
                warm_ids = torch.randint(0, model.config.vocab_size, (batch, min(contexts[-1], s.prefill_chunk + 1024)),
                                         device=self.device)
                _, warmup_s = measure.timed(lambda: engine.prefill(warm_ids), self.device)
                del warm_ids
            for context in contexts:
                row = self.base_row(source, "fast", batch, context)
                row.update(setup_s=setup_s, prefill_warmup_s=warmup_s, compiled=compiled, cuda_graph=engine.graphed,
                           pdl=engine.pdl, cache_gib=engine.cache.nbytes / GIB)
                prefill = context in prefill_contexts
                self.guarded(row, lambda: self.engine_case(engine, model, row, batch, context, prefill),
                             estimate_s=self.prefill_estimate(model.config, batch, context) if prefill else 5.0)
        finally:
            engine = model = None  # noqa: F841  (drop the last references before handing memory back)
            torch._dynamo.reset()  # compiled variants may hold this engine's cache and weights alive
            free_memory()

    def build_engine(self, model, source: ModelSource, batch: int, contexts: list[int]):
        """An engine for the largest context that fits; the contexts that do not fit are recorded as such.

        If compiling the decode step fails, the engine is built again without torch.compile (the row says so).
        """
        s = self.settings
        extra = s.warmup_tokens + s.decode_tokens + 1 + (PROFILED_STEPS + 1 if s.profile else 0)
        compile_step = s.compile
        while contexts:
            try:
                engine, setup_s = measure.timed(lambda: FastHypeNet(
                    model, max_batch=batch, max_len=contexts[-1] + extra, prefill_chunk=s.prefill_chunk,
                    compile=compile_step, cuda_graph=s.cuda_graph, fused_lightning_step=s.fused_lightning_step,
                    compile_options=MAX_AUTOTUNE if s.max_autotune else None, gemv=s.gemv,
                    gemv_fusion=s.gemv_fusion, pdl=s.pdl), self.device)
                for key, found in engine.gemv_tuning.items():  # the Triton GEMV's launch settings, per shape
                    name = "x".join(map(str, key[:2])) + "".join(f" {loop}" for loop in key[2:])  # "NxK[ norm]"
                    self.meta.setdefault("gemv_settings", {})[name] = {
                        "block_n_block_k_warps_stages": list(found["settings"]),
                        "us_per_call": round(found["ms"][found["settings"]] * 1e3, 2)}
                return engine, setup_s, contexts
            except torch.OutOfMemoryError:
                free_memory()
                self.record({**self.base_row(source, "fast", batch, contexts[-1]),
                             "status": "does not fit: static cache out of memory",
                             "cache_gib": _cache_gib(model.config, batch, contexts[-1] + extra, self.dtype)})
                contexts = contexts[:-1]
            except Exception as error:  # noqa: BLE001  (a failed compile must not end a one-shot GPU run)
                if compile_step is False or not engine_compiles(self.device, compile_step):
                    raise
                traceback.print_exc()
                self.meta.setdefault("warnings", []).append(
                    f"{source.label} batch {batch}: torch.compile of the decode step failed "
                    f"({type(error).__name__}: {first_line(error)}); "
                    "measured without compile")
                free_memory()
                compile_step = False
        raise RuntimeError("no context fits")

    def engine_case(self, engine: FastHypeNet, model, row: dict, batch: int, context: int, prefill: bool) -> None:
        s = self.settings
        measure.reset_peak_memory(self.device)
        if prefill:
            ids = torch.randint(0, model.config.vocab_size, (batch, context), device=self.device)
            logits, row["prefill_s"] = measure.timed(lambda: engine.prefill(ids), self.device)
            row["prefill_tokens_per_s"] = batch * context / row["prefill_s"]
            row["prefill_peak_mem_gib"] = measure.peak_memory_gib(self.device)
            del ids
        else:
            fill_synthetic(engine, batch, context)
            logits = torch.zeros(batch, model.config.vocab_size, device=self.device)
        token = logits.argmax(-1)

        def step():
            nonlocal token
            token = engine.decode(token).argmax(-1)

        for _ in range(s.warmup_tokens):
            step()
        row.update(measure.summarize_steps(measure.step_times(step, s.decode_tokens, self.device), batch))
        row["peak_mem_gib"] = measure.peak_memory_gib(self.device)
        if s.profile:
            name = f"profile_{row['shape']}_b{batch}_{length_label(context)}.txt"
            row["profile"] = profile_calls(step, PROFILED_STEPS, self.device, s.out / name,
                                           f"{row['model']} decode step, batch {batch}, context {context}")
        row["kv_state_gib"] = sum(measure.cache_bytes(model.config, batch, context, self.dtype).values()) / GIB
        self.add_floor(row, model, batch, context)

    # ------------------------------------------------------------------ transformers

    def transformers_cases(self, source: ModelSource, batch: int) -> None:
        if self.remaining() < 30:
            for context in self.settings.transformers_contexts:
                self.record({**self.base_row(source, "transformers", batch, context), "status": "skipped: time budget"})
            return
        model = None
        try:
            model = source.transformers_model()
            warm_ids = torch.randint(0, model.config.vocab_size, (batch, 1024), device=self.device)
            model.generate(warm_ids, attention_mask=torch.ones_like(warm_ids), max_new_tokens=4, min_new_tokens=4,
                           do_sample=False, pad_token_id=0)  # CUDA/cuBLAS start-up stays out of the timings
            del warm_ids
            self.unrun_transformers_contexts(source, model, batch)
            for context in sorted(self.settings.transformers_contexts):
                row = self.base_row(source, "transformers", batch, context)
                estimate = (1.15 * self.prefill_estimate(model.config, batch, context)
                            + 0.2 * self.settings.decode_tokens)
                self.guarded(row, lambda: self.transformers_case(model, row, batch, context), estimate_s=estimate)
        finally:
            model = None  # noqa: F841
            free_memory()

    def unrun_transformers_contexts(self, source: ModelSource, model, batch: int) -> None:
        """Contexts past the transformers runs: report what a one-pass prefill would need against device memory."""
        if self.device.type != "cuda":
            return
        device_gib = torch.cuda.get_device_properties(self.device).total_memory / GIB
        for context in sorted(c for c in self.settings.contexts if c > max(self.settings.transformers_contexts)):
            need = {k: v / GIB for k, v in measure.one_pass_prefill_bytes(model, batch, context).items()}
            verdict = "does not fit" if need["total"] > device_gib else "would fit"
            self.record({**self.base_row(source, "transformers", batch, context), "estimated_need_gib": need["total"],
                         "status": f"not run, estimated: {verdict} (one-pass prefill needs >= {need['total']:.0f} GiB "
                                   f"= weights {need['weights']:.1f} + KV cache {need['kv']:.0f} + activations "
                                   f"{need['activations']:.0f}, of {device_gib:.0f} GiB)"})

    def transformers_case(self, model, row: dict, batch: int, context: int) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList

        device = self.device
        stamps = []

        class StepClock(StoppingCriteria):  # called once per generated token, after its logits are sampled
            def __call__(self, input_ids, scores, **kwargs):
                measure.synchronize(device)
                stamps.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        new_tokens = self.settings.warmup_tokens + self.settings.decode_tokens + 1
        ids = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
        measure.reset_peak_memory(device)
        measure.synchronize(device)
        begin = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0, stopping_criteria=StoppingCriteriaList([StepClock()]))
        row["prefill_s"] = stamps[0] - begin
        row["prefill_tokens_per_s"] = batch * context / row["prefill_s"]
        warm = self.settings.warmup_tokens  # stamps[0] closes the prefill; stamps[i] the i-th decode step
        gaps = [b - a for a, b in zip(stamps[warm:], stamps[warm + 1:])]
        row.update(measure.summarize_steps(gaps, batch))
        row["peak_mem_gib"] = measure.peak_memory_gib(device)
        row["kv_state_gib"] = sum(measure.cache_bytes(model.config, batch, context, self.dtype).values()) / GIB
        self.add_floor(row, model, batch, context)

    # ------------------------------------------------------------------ shared

    def guarded(self, row: dict, case, estimate_s: float) -> None:
        """Run one case unless it would overrun the budget; out-of-memory is a result ("does not fit"), not a crash."""
        if estimate_s > self.remaining():
            row["status"] = f"skipped: time budget (needs ~{estimate_s:.0f} s, {max(0, self.remaining()):.0f} s left)"
        else:
            try:
                case()
                row["status"] = "ok"
            except Exception as error:  # noqa: BLE001  (one broken case must not end a one-shot GPU run)
                row["error"] = first_line(error)
                if is_out_of_memory(error):  # torch's, or a Triton kernel's
                    row["status"] = "does not fit: out of memory"
                    row["peak_mem_gib"] = measure.peak_memory_gib(self.device)
                else:
                    traceback.print_exc()
                    row["status"] = f"error: {type(error).__name__}"
            finally:
                free_memory()
        self.record(row)

    def add_floor(self, row: dict, model, batch: int, context: int) -> None:
        floor = measure.decode_floor(model, batch, context, self.meta["bandwidth_gbps"] * GB)
        row.update(floor)
        row["ratio_to_floor"] = row["ms_per_token"] / floor["floor_ms"]

    def prefill_estimate(self, config, batch: int, context: int) -> float:
        """Seconds a prefill should take at the assumed rates (for the time budget only)."""
        mixers = getattr(config, "mixer_types", None) or ["attention"] * config.num_hidden_layers
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        attention = sum(m == "attention" for m in mixers) * 2 * batch * context**2 * heads * head_dim
        dense = 2 * batch * context * 12 * config.num_hidden_layers * config.hidden_size**2
        slower = max(1.0, _ASSUMED_MATMUL_FLOPS / (self.meta.get("matmul_tflops", 0) * 1e12 or _ASSUMED_MATMUL_FLOPS))
        return slower * (attention / _ASSUMED_ATTENTION_FLOPS + dense / _ASSUMED_MATMUL_FLOPS) + 2.0


@torch.no_grad()
def fill_synthetic(engine: FastHypeNet, batch: int, context: int) -> None:
    """Make the engine's cache look like `context` tokens were prefilled in `batch` rows (random keys, values, states).

    Decode time depends on how many bytes are read, not on what they hold, so this times decode at a context
    without paying for its prefill.
    """
    engine.cache.reset()
    for layer in engine.cache.layers:
        for buffer in (layer.keys, layer.values):
            if buffer is not None:
                buffer[:batch, :, :context].normal_()
        if layer.state is not None:
            layer.state[:batch].normal_(std=0.02)
    engine.length = context


def engine_compiles(device: torch.device, compile_step: bool | None) -> bool:
    return device.type == "cuda" if compile_step is None else compile_step


def free_memory() -> None:
    if torch.cuda.is_available():  # only device memory needs handing back between cases
        gc.collect()
        torch.cuda.empty_cache()


def _cache_gib(config, batch: int, max_len: int, dtype: torch.dtype) -> float:
    return sum(measure.cache_bytes(config, batch, max_len, dtype).values()) / GIB


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run(settings: BenchSettings) -> dict:
    """Run the benchmark; returns the report dict (also written to settings.out)."""
    return Bench(settings).run()


__all__ = ["Bench", "BenchSettings", "fill_synthetic", "run"]
