"""`hypenet convert --plan` (and `hypenet STAGE --plan`): what a conversion will do before it starts.

It prints the teacher and the student it becomes, each stage's budget and batch shape, the model FLOPs, about how
long they take on one H200, the data, and what --out already holds (finished stages, a stopped stage's checkpoint,
whether the run would be refused). No weight is read and nothing is written: the teacher is built from its config on
PyTorch's meta device, and every stage's objective from it by `halo.flops.build_objective`, so the FLOP counts are
bench-train's (`halo/flops.py`). `hypenet export --plan` prints the export's own plan (`make_export_plan`): what it
reads and writes, how it chooses the base, and what --out holds of it.

The times divide those FLOPs by the model-FLOPs utilisation `hypenet bench-train` measured on one H200 for the
measured shape nearest in size to the teacher (`MEASURED_MFU`). They leave out layer selection and export
(inference), loading, and the first step's compilation; with N GPUs divide them by about N (DDP and FSDP2 kept
96-99% of one GPU's tokens/s per GPU, results/gpu_multi).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ..eval.models import head_dim, kv_cache_bytes_per_token, recurrent_state_bytes
from ..teachers.load import check_supported, dequantised_folder, hub_config, resolve_teacher
from ..units import byte_size, duration_label
from .config import PAPER_TEACHER_PARAMS, ConvertConfig, ExportConfig, HaloError, beyond_teacher_window, resolve
from .engine import LOSS_LOG, latest_checkpoint, loss_records
from .export import scaling_label, tolerance_rule
from .flops import H200_DENSE_BF16_TFLOPS, build_objective
from .pipeline import (
    DONE,
    MODEL_DIR,
    STAGES,
    TEACHER_STAGES,
    check_output,
    done_info,
    nothing_to_do,
    saved_settings_refusal,
)
from .report import REPORT_JSON, REPORT_MD
from .select import SCORED_LAYERS, check_selection, default_num_attention

TRAINED = ("stage1", "stage2", "stage3")
SELECT = "select"
EXPORT = "export"
H200_GIB = 139  # what one H200 gives PyTorch, about
# bytes per trained parameter kept for the whole stage: fp32 weights (mixed precision keeps fp32 masters), fp32
# gradients, and AdamW's two fp32 moments
TRAINED_BYTES = 4 + 4 + 8
# Model-FLOPs utilisation of stages 1, 2 and 3 measured by `hypenet bench-train` on one H200, by teacher size, eager
# and with `compile: true` (stages 2 and 3 only; stage 1 is never compiled).
MEASURED_MFU = {
    # SmolLM2-135M -> HypeNet (results/gpu_convert/train_speed/profile_eager/smollm2, compile/smollm2)
    134_515_008: {False: (0.040, 0.087, 0.072), True: (0.040, 0.126, 0.071)},
    # Qwen3-1.7B -> HypeNet-2B (results/gpu_convert/train_speed/train_speed.json, compile_micro32/2b)
    int(PAPER_TEACHER_PARAMS): {False: (0.209, 0.247, 0.200), True: (0.209, 0.425, 0.307)},
}


def trained_tokens(config: ConvertConfig, name: str) -> int:
    """The tokens training stage `name` of a resolved config trains: its steps of batch_size x seq_len tokens (its
    budget rounded down to whole steps, as the report counts them)."""
    stage = getattr(config, name)
    return stage.steps() * stage.batch_size * stage.seq_len


def time_left(stage: str, tokens_left: int, tokens_per_s: float, later: dict[str, int],
              cost: dict[str, float] | None = None, uncounted: str | None = None) -> tuple[float, str]:
    """(seconds, a line saying them) that a conversion's remaining work takes: `tokens_left` of `stage` at its
    measured `tokens_per_s`, then the `later` stages' tokens (by name, in their order), each at `stage`'s tokens/s
    divided by its `cost` per token relative to `stage`'s (`relative_costs`; without it, 1: the same tokens/s). The
    later stages may include the layer selection (SELECT: its `selection_tokens`) and the export (EXPORT: its grid's
    bases times `export.search_lengths`), each with its cost. An estimate: loading is not in it, and a later stage's
    speed is inferred, not measured. `uncounted`: what the line says it leaves out (default: the selection and the
    export, those not named in `later`; "" for nothing)."""
    cost = cost or {}
    rates = {name: tokens_per_s / cost.get(name, 1.0) for name in later}
    seconds = tokens_left / tokens_per_s + sum(tokens / rates[name] for name, tokens in later.items())
    parts = [f"{tokens_left:,} tokens of {stage} at its measured {tokens_per_s:,.0f} tokens/s"]
    parts += [f"{tokens:,} of {name} at {rates[name]:,.0f}" for name, tokens in later.items()]
    selection, export = SELECT in later, EXPORT in later
    basis = ""
    if later:
        passes = ["the layer selection, teacher passes"] * selection + ["the export, forward passes"] * export
        alone = f"; {' and '.join(passes)}, by {'their' if len(passes) > 1 else 'its'} FLOPs alone" if passes else ""
        basis = ("; the later stages' tokens/s inferred from this one's by their model FLOPs per token (on a GPU "
                 f"also bench-train's MFU{alone})"
                 if cost else "; the later stages' at this one's, though stages differ in cost per token")
    if uncounted is None:
        uncounted = " and ".join(["selection"] * (not selection) + ["export"] * (not export))
    what = ", ".join(["training"] + ["layer selection"] * selection + ["export"] * export)
    what = " and ".join(what.rsplit(", ", 1))
    return seconds, (f"conversion: about {duration_label(seconds)} of {what} left "
                     f"(estimate: {', then '.join(parts)}{basis}{f'; {uncounted} not counted' if uncounted else ''})")


def stage_objectives(teacher, config: ConvertConfig) -> list[tuple[str, nn.Module, int]]:
    """(name, objective, model FLOPs per token) of each training stage of a resolved config, built on the meta device
    from a meta-device `teacher` (shapes only: no memory, no weights)."""
    layers = teacher.config.num_hidden_layers
    attention = attention_layer_count(config, layers)
    # which layers keep attention changes no shape, so any `attention` of them give the student's counts
    mixer_types = ["attention" if i < attention else "lightning" for i in range(layers)]
    built = []
    with torch.device("meta"):
        for name in TRAINED:
            objective, terms = build_objective(name, teacher, mixer_types, config)
            built.append((name, objective, sum(factor * n for _, factor, n in terms)))
    return built


def selection_tokens(config: ConvertConfig, layers: int) -> int | None:
    """The tokens the layer selection runs through the teacher with the built-in probes (`select.probe_sweep`): a
    baseline pass and one per layer, each over the recall_samples x recall_context tokens of the recall probes and
    the commonsense text cut into rows of recall_context. None when there is no such sweep: a strategy other than
    halo or needle (no teacher pass), or lm-eval's tasks (their cost is not counted). Strategy "needle" runs the
    teacher once over each of its NIAH prompts (`needle_prompts`) of about recall_context tokens."""
    select = config.select
    if select.strategy == "needle":  # one pass per prompt (`select.needle_layers`: the samples spread over depths)
        return needle_prompts(config) * select.recall_context
    if select.strategy != "halo" or select.lm_eval_recall:
        return None
    context = select.recall_context
    return (layers + 1) * (select.recall_samples + math.ceil(select.commonsense_tokens / context)) * context


def needle_prompts(config: ConvertConfig) -> int:
    """The NIAH prompts that strategy "needle" runs through the teacher (`select.needle_prompt_count`)."""
    from .select import needle_prompt_count

    return needle_prompt_count(config.select.recall_samples)


def selection_flops(teacher, students, config: ConvertConfig) -> float | None:
    """The model FLOPs (2N per token and Linear weight, as `halo/flops.py` counts) of the layer selection's
    `selection_tokens`, for `teacher` (meta-device shapes do) and stage 1's lightning `students` (by layer): the
    baseline pass runs every layer; the pass of layer i only layers i..L-1 (those before it are replayed), layer i
    with its student in place of its attention; the LM head runs where the probes score (the commonsense rows' every
    position, the recall rows' value digits); and the needle-attention pass runs the teacher without its head over the
    recall rows once more. None where `selection_tokens` is."""
    from ..teachers import teacher_attention
    from .flops import matmul_parameters
    from .probes import KEY_WORDS, TOKENS_PER_KEY, VALUE_DIGITS

    select, layers = config.select, teacher.model.layers
    if selection_tokens(config, len(layers)) is None:
        return None
    if select.strategy == "needle":  # the whole teacher over each prompt, its LM head at the last position only
        head = matmul_parameters(teacher.get_output_embeddings())
        return 2 * (sum(matmul_parameters(layer) for layer in layers) * selection_tokens(config, len(layers))
                    + head * needle_prompts(config))
    context = select.recall_context
    recall = select.recall_samples * context
    text = math.ceil(select.commonsense_tokens / context) * context
    values = select.recall_samples * min(len(KEY_WORDS), max(1, context // TOKENS_PER_KEY)) * VALUE_DIGITS
    per_layer = [matmul_parameters(layer) for layer in layers]
    passes = [sum(per_layer)] + [
        sum(per_layer[i:]) - matmul_parameters(teacher_attention(teacher, i)) + matmul_parameters(students[i])
        for i in range(len(layers))]
    head = matmul_parameters(teacher.get_output_embeddings())
    return 2 * (sum(passes) * (recall + text) + len(passes) * head * (text + values) + sum(per_layer) * recall)


def export_grid(export: ExportConfig) -> int:
    """The bases the export's search measures before any past its grid's edge (a base listed twice is measured once)."""
    return len(set(export.logit_scaling_candidates))


def export_eval_len(config: ConvertConfig) -> int:
    """The tokens the export scores per held-out document: `export.eval_len`, or 4 x stage 3's context."""
    return config.export.eval_len or 4 * config.stage3.seq_len


def export_flops(student, lengths: list[int]) -> float:
    """The FLOPs of one base of the export's search (`export.search_lengths`: one forward of `student` per sequence,
    its LM head at every position but the last, as `token_nlls` runs it): 2N per token and Linear weight (as
    `halo/flops.py` counts), and, unlike the training stages' model FLOPs, the softmax attention layers' scores: QK^T
    and AV under the causal mask, 4 x heads x head_dim per earlier position (2 x heads x head_dim x length per token
    on average). At the export's lengths these can outweigh the weights: on SmolLM2 with 7 attention layers at 64K
    tokens they are 1.7 times its 2N. The lightning layers' recurrence, constant per token, is left out, as in
    training."""
    from .flops import matmul_parameters

    config = student.config
    head = matmul_parameters(student.get_output_embeddings())
    body = matmul_parameters(student) - head
    scores = 2 * sum(kind == "attention" for kind in config.mixer_types) * config.num_attention_heads * head_dim(config)
    return sum(2 * (body * n + head * (n - 1)) + scores * n * n for n in lengths)


def relative_costs(teacher_cfg, config: ConvertConfig, stage: str, gpu: bool,
                   export_lengths: list[int] | None = None) -> dict[str, float]:
    """Each training stage's time per token relative to `stage`'s: the ratio of their model FLOPs per token, and on a
    GPU also of the MFU bench-train measured on one H200 for the nearest teacher shape (`MEASURED_MFU`: stage 1
    reaches a third of stage 2's there). On a CPU the FLOPs alone (the README's CPU conversion: stage 1 ran at 260
    tokens/s, stage 2 at 87, 2.6x the FLOPs per token). And, where it runs the built-in probes, the layer selection's
    (SELECT) per `selection_tokens` token: the ratio of its model FLOPs per token (`selection_flops`) to `stage`'s,
    at `stage`'s MFU (none is measured for it). And, given `export_lengths` (`export.search_lengths` of the held-out
    documents) and a student with attention layers (else the export searches no base), the export's (EXPORT) per token
    it runs through the student: `export_flops` per token over `stage`'s, at `stage`'s MFU."""
    with torch.device("meta"):
        teacher = AutoModelForCausalLM.from_config(teacher_cfg)
    teacher_parameters = sum(p.numel() for p in teacher.parameters())
    built = stage_objectives(teacher, config)
    per_token = {name: flops for name, _, flops in built}
    stage1 = next(objective for name, objective, _ in built if name == "stage1")  # (it holds the students)
    mfu = dict(zip(TRAINED, nearest_mfu(teacher_parameters, config.compile)[1])) if gpu else dict.fromkeys(TRAINED, 1)
    costs = {name: (per_token[name] / mfu[name]) / (per_token[stage] / mfu[stage]) for name in TRAINED}
    selection = selection_flops(teacher, stage1.students, config)
    if selection is not None:
        costs[SELECT] = selection / selection_tokens(config, teacher_cfg.num_hidden_layers) / per_token[stage]
    student = next(objective.student for name, objective, _ in built if name == "stage2")
    if export_lengths and "attention" in student.config.mixer_types:
        costs[EXPORT] = export_flops(student, export_lengths) / sum(export_lengths) / per_token[stage]
    return costs


def teacher_config(spec: str):
    """The teacher's transformers config, read without its weights (a GGUF file's header, or its dequantised cache)."""
    location, gguf = resolve_teacher(spec)
    if gguf is None and not Path(location).exists():  # a hub id: what to do, when the hub cannot give its config
        hub_config(location)
    cached = dequantised_folder(gguf) if gguf else None
    try:
        if cached is not None and (cached / "config.json").is_file():
            config = AutoConfig.from_pretrained(cached)
        else:
            config = AutoConfig.from_pretrained(location, **({"gguf_file": gguf} if gguf else {}))
        check_supported(config.model_type, location)
    except (OSError, ValueError) as error:  # (a missing path is MissingInputError, from resolve_teacher above)
        raise HaloError(f"cannot read the teacher's config {spec!r}: {error}") from error
    return config


def attention_layer_count(config: ConvertConfig, layers: int) -> int:
    select = config.select
    if select.strategy == "none":
        return 0
    if select.strategy == "manual":
        return len(select.manual_layers or [])
    return select.num_attention if select.num_attention is not None else default_num_attention(layers)


def nearest_mfu(teacher_parameters: int, compiled: bool) -> tuple[int, tuple[float, float, float]]:
    size = min(MEASURED_MFU, key=lambda n: abs(math.log(n / teacher_parameters)))
    return size, MEASURED_MFU[size][compiled]


def logged_progress(stage_dir: Path, steps: int, now: float | None = None) -> str | None:
    """Where a stage's loss log stands: its last step, how long ago it was written, and the time the steps left take
    at the median of its last 20 steps' times (None before its first step)."""
    timed = [row for row in loss_records(stage_dir) if "seconds" in row and "step" in row]
    if not timed:
        return None
    last = timed[-1]["step"]
    per_step = statistics.median(row["seconds"] for row in timed[-20:])
    ago = (time.time() if now is None else now) - (stage_dir / LOSS_LOG).stat().st_mtime
    return (f"logged step {last} of {steps} {duration_label(ago)} ago; the other {steps - last} at "
            f"{per_step:.3g} s/step: about {duration_label((steps - last) * per_step)}")


def scored_layers(path: Path) -> dict | None:
    """What a layer selection stopped part-way kept (`select.ScoredLayers`), or None."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_state(out: Path, name: str, steps: int | None) -> str:
    done = done_info(out, name)
    if done is not None:
        steps = done.get("steps")
        return "done" + (f" ({steps} step{'s' if steps != 1 else ''})" if steps is not None else "")
    stage_dir = out / "stages" / name
    if not stage_dir.exists():
        return "to run"
    scored = scored_layers(stage_dir / SCORED_LAYERS) if name == "select" else None
    if scored:
        return (f"started; {len(scored['recall'])} of {scored['num_layers']} layers scored: --resume goes on from "
                "there (with the same settings)")
    progress = logged_progress(stage_dir, steps) if steps else None
    checkpoint = latest_checkpoint(stage_dir)
    saved = (f"checkpoint at step {int(checkpoint.name.split('-')[1])}: --resume continues from there" if checkpoint
             else "no checkpoint yet: --resume starts it again")
    return f"{progress}; {saved}" if progress else f"started; {saved}"


def run_refusal(config: ConvertConfig, stages: list[str], resume: bool, overwrite: bool,
                start_from: str | Path | None) -> str | None:
    """Why `run_stages` would refuse to start, before it loads anything (`check_output`); None when it would not."""
    try:
        check_output(config, stages, resume, overwrite, start_from)
    except HaloError as error:
        return str(error)
    return saved_settings_refusal(Path(config.out), config) if resume else None


def data_refusal(source: str, installed: str) -> str | None:
    """Why a run would stop as it reads the data (`data_installed` says it is not there); None when it would not."""
    return f"the data ({source}): {installed.removeprefix('no: ')}" if installed.startswith("no") else None


def make_plan(config: ConvertConfig, stages: list[str] = STAGES, resume: bool = False, overwrite: bool = False,
              start_from: str | Path | None = None) -> dict:
    """The plan as a dict (rendered by `markdown`); that of the export alone (`make_export_plan`) for ["export"]."""
    if list(stages) == ["export"]:
        return make_export_plan(config, resume, overwrite, start_from)
    out = Path(config.out)
    refusal = run_refusal(config, stages, resume, overwrite, start_from)

    teacher_cfg = teacher_config(config.teacher)
    with torch.device("meta"):  # shapes only: no memory, no weights read
        teacher = AutoModelForCausalLM.from_config(teacher_cfg)
    teacher_parameters = sum(p.numel() for p in teacher.parameters())
    resolved = resolve(config, teacher_parameters)
    layers = teacher_cfg.num_hidden_layers
    try:
        check_selection(resolved.select.strategy, resolved.select.num_attention, resolved.select.manual_layers, layers)
    except ValueError as error:
        raise HaloError(str(error)) from None
    attention = attention_layer_count(resolved, layers)
    size, mfu = nearest_mfu(teacher_parameters, resolved.compile)
    on_cpu = resolved.device == "cpu" or (resolved.device == "auto" and not torch.cuda.is_available())

    rows, student, students = [], None, None
    for index, (name, objective, per_token) in enumerate(stage_objectives(teacher, resolved)):
        stage = getattr(resolved, name)
        if name == "stage1":
            students = objective.students
        if name == "stage2":
            student = objective.student
        flops = stage.tokens * per_token
        trained = sum(p.numel() for p in objective.parameters() if p.requires_grad)
        teacher_bytes = teacher_parameters * (4 if on_cpu else 2) if name in TEACHER_STAGES else 0  # bf16 on GPU
        rows.append({
            "stage": name, "tokens": stage.tokens, "seq_len": stage.seq_len, "batch_size": stage.batch_size,
            "micro_batch_size": stage.micro_batch_size, "steps": stage.steps(), "lr": stage.lr,
            "schedule": stage.schedule, "flops": flops, "mfu": mfu[index],
            "h200_hours": flops / (mfu[index] * H200_DENSE_BF16_TFLOPS * 1e12) / 3600,
            "static_bytes": trained * TRAINED_BYTES + teacher_bytes,
        })
    planned = [row for row in rows if row["stage"] in stages]
    replaced = STAGES[STAGES.index(stages[0]):] if overwrite else ()

    def state(name: str, steps: int | None) -> str:
        found = stage_state(out, name, steps)
        return f"to run again: --overwrite replaces it ({found})" if name in replaced and found != "to run" else found

    for row in rows:
        row["state"] = state(row["stage"], row["steps"])
    data = resolved.data
    installed = data_installed(data.source)
    refusal = refusal or data_refusal(data.source, installed)  # (the run would stop as it reads the data)
    export = resolved.export
    export_len, export_bases = export_eval_len(resolved), export_grid(export)
    # at most: the grid's bases over max_docs held-out documents of eval_len tokens (fewer or shorter ones cost less;
    # the bases past the grid's edge depend on the losses); a student without attention layers searches no base
    search = export_bases * export_flops(student, [export_len] * export.max_docs) if attention else None
    return {
        "teacher": {
            "spec": config.teacher, "architecture": teacher_cfg.model_type, "parameters": teacher_parameters,
            "layers": layers, "hidden_size": teacher_cfg.hidden_size, "heads": teacher_cfg.num_attention_heads,
            "kv_heads": teacher_cfg.num_key_value_heads, "head_dim": head_dim(teacher_cfg),
            "context": getattr(teacher_cfg, "max_position_embeddings", None),
            "kv_cache_bytes_per_token": kv_cache_bytes_per_token(teacher_cfg),
        },
        "student": {
            "parameters": sum(p.numel() for p in student.parameters()), "attention_layers": attention,
            "strategy": resolved.select.strategy, "kv_cache_bytes_per_token": kv_cache_bytes_per_token(student.config),
            "rnn_state_bytes": recurrent_state_bytes(student.config),  # fp32, whatever the context
        },
        "data": {
            "source": data.source, "heldout_fraction": data.heldout_fraction,
            "tokens_read": data.max_tokens or max(row["tokens"] for row in rows),
            "installed": installed,
        },
        "stages": rows,
        "planned": [row["stage"] for row in planned] + [s for s in ("select", "export") if s in stages],
        "select": resolved.select.strategy, "selection_state": state("select", None),
        # the built-in probes' sweep (None: no teacher pass, or lm-eval's tasks, not counted)
        "selection_tokens": selection_tokens(resolved, layers), "selection_context": resolved.select.recall_context,
        "selection_flops": selection_flops(teacher, students, resolved),
        "export_state": state("export", None),
        "export_rule": export_rule(resolved.export),
        "export_bases": export_bases, "export_docs": export.max_docs, "export_len": export_len,
        "export_flops": search, "export_mfu": mfu[TRAINED.index("stage3")],
        "total": {"tokens": sum(row["tokens"] for row in planned), "flops": sum(row["flops"] for row in planned),
                  "h200_hours": sum(row["h200_hours"] for row in planned)},
        "mfu_measured_at": size, "compile": resolved.compile,
        "on_cpu": on_cpu, "cpu_matmul_tflops": cpu_matmul_tflops() if on_cpu else None,
        "out": str(out), "refusal": refusal,
        "beyond_teacher_window": beyond_teacher_window(resolved, getattr(teacher_cfg, "max_position_embeddings", None)),
    }


def make_export_plan(config: ConvertConfig, resume: bool = False, overwrite: bool = False,
                     start_from: str | Path | None = None) -> dict:
    """The plan of `hypenet export` (rendered by `markdown`): what it reads (stage 3's model, the teacher, the data's
    held-out documents), how it chooses the base, what it writes, what --out holds of it, and why it would stop at
    once, or that it would do nothing (--resume of a finished export)."""
    out = Path(config.out)
    refusal = run_refusal(config, ["export"], resume, overwrite, start_from)
    finished = nothing_to_do(out, ["export"], resume) if refusal is None else None
    teacher = data = None
    if finished is None:  # (a run with nothing to do loads neither)
        teacher_cfg = teacher_config(config.teacher)
        with torch.device("meta"):
            parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(teacher_cfg).parameters())
        teacher = {"spec": config.teacher, "architecture": teacher_cfg.model_type, "parameters": parameters}
        resolved = resolve(config, parameters)
        installed = data_installed(config.data.source)
        data = {"source": config.data.source, "installed": installed,
                "heldout_fraction": config.data.heldout_fraction,
                "tokens_read": config.data.max_tokens or max(getattr(resolved, name).tokens for name in TRAINED)}
        refusal = refusal or data_refusal(config.data.source, installed)
    state = stage_state(out, "export", None)
    if overwrite and state != "to run":
        state = f"to run again: --overwrite replaces it ({state})"
    export, context = config.export, config.stage3.seq_len
    return {
        "command": "export", "out": str(out), "from": None if start_from is None else str(start_from),
        "stage3_model": str(out / "stages" / "stage3" / MODEL_DIR),
        "stage3_state": stage_state(Path(start_from) if start_from is not None else out, "stage3", None),
        "teacher": teacher, "data": data, "max_docs": export.max_docs, "train_context": context,
        "eval_len": export_eval_len(config), "export_rule": export_rule(export),
        "writes": [str(out / MODEL_DIR), str(out / "stages" / "export" / DONE), str(out / REPORT_JSON),
                   str(out / REPORT_MD)],
        "state": state, "nothing_to_do": finished, "refusal": refusal,
    }


def export_markdown(plan: dict) -> str:
    """`markdown` of `make_export_plan`'s plan."""
    lines = [f"# Plan: hypenet export in {plan['out']}", ""]
    t, d = plan["teacher"], plan["data"]
    if not plan["nothing_to_do"]:  # (a run with nothing to do reads and writes nothing)
        copied = f"; copied into {plan['out']} from {plan['from']} with the stages before it" if plan["from"] else ""
        lines.append(f"- reads: stage 3's model, {plan['stage3_model']} (stage3: {plan['stage3_state']}{copied})")
        documents = f"{plan['max_docs']} longest held-out document{'s' * (plan['max_docs'] != 1)}"
        lines += [
            f"- loads: the teacher {t['spec']}'s tokenizer and config ({t['architecture']}, "
            f"{_count(t['parameters'])} parameters; not its weights)",
            f"- data: {d['source']} (installed: {d['installed']}); reads up to {_count(d['tokens_read'])} training "
            f"tokens to split off the held-out documents ({d['heldout_fraction']:.0%} of them)",
            f"- scores: the {documents}, cut to {plan['eval_len']:,} tokens and scored past stage 3's "
            f"{plan['train_context']:,}, to choose {plan['export_rule']}",
            f"- writes: {', '.join(plan['writes'])}",
        ]
    lines.append(f"- in --out: export {plan['state']}")
    if plan["nothing_to_do"]:
        lines += ["", plan["nothing_to_do"]]
    if plan["refusal"]:
        lines += ["", f"**As asked, this run would stop at once:** {plan['refusal']}"]
    return "\n".join(lines) + "\n"


def export_rule(export: ExportConfig) -> str:
    """How the export will choose HyPE's logit-scaling base, in the words of its config."""
    bases = ", ".join(scaling_label(a) for a in export.logit_scaling_candidates)
    rule = f"the logit-scaling base among {bases}"
    if export.logit_scaling_extend:
        rule += f" and up to {export.logit_scaling_extend} more past the edge while the loss still falls there"
    if export.logit_scaling_tolerance:
        rule += f"; {tolerance_rule(export.logit_scaling_tolerance, bool(export.copy_probe))}"
    else:
        rule += "; the lowest held-out loss"
        if export.copy_probe:
            rule += f", the far-copy loss of {export.copy_probe} spans per document reported beside it"
    return rule


def data_installed(source: str) -> str:
    from ..data.sources import source_files

    if source.startswith("hf:"):
        return "a Hugging Face dataset: downloaded when the conversion starts"
    try:
        files = source_files(source)
    except (OSError, ValueError) as error:
        return f"no: {error}"
    return f"yes ({len(files)} files)" if files else "no files found"


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def cpu_matmul_tflops() -> float:
    """This CPU's fp32 matmul rate (TFLOP/s), as `hypenet bench` measures a device's."""
    from ..bench.measure import matmul_flops

    return matmul_flops(torch.device("cpu"), torch.float32) / 1e12


def _flops(n: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}FLOP"
    return f"{n:.3g} FLOP"


def markdown(plan: dict) -> str:
    if plan.get("command") == "export":
        return export_markdown(plan)
    t, s, d = plan["teacher"], plan["student"], plan["data"]
    lines = [
        f"# Plan: {t['spec']} -> HypeNet in {plan['out']}",
        "",
        f"- teacher: {t['architecture']}, {_count(t['parameters'])} parameters, {t['layers']} layers, hidden "
        f"{t['hidden_size']}, {t['heads']} heads / {t['kv_heads']} KV heads of {t['head_dim']}, context "
        f"{t['context']}",
        f"- student: {_count(s['parameters'])} parameters; {s['attention_layers']} of {t['layers']} layers keep "
        f"attention (chosen by `{s['strategy']}`), the others become Lightning Attention",
        f"- KV cache per token (bf16): teacher {byte_size(t['kv_cache_bytes_per_token'])}, student "
        f"{byte_size(s['kv_cache_bytes_per_token'])}, plus {byte_size(s['rnn_state_bytes'])} of RNN state at any "
        "length",
        f"- data: {d['source']} (installed: {d['installed']}); reads up to {_count(d['tokens_read'])} training "
        f"tokens (a smaller corpus is repeated), {d['heldout_fraction']:.0%} of the documents held out",
        "",
        "| stage | tokens | seq len | batch (micro) | steps | lr | FLOPs | H200 time | memory before activations "
        "| in --out |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in plan["stages"]:
        mark = "" if row["stage"] in plan["planned"] else " (not run by this command)"
        micro = row["micro_batch_size"] or "auto"
        lines.append(
            f"| {row['stage']}{mark} | {_count(row['tokens'])} | {row['seq_len']} | {row['batch_size']} ({micro}) | "
            f"{row['steps']:,} | {row['lr']:g} {row['schedule']} | {_flops(row['flops'])} | "
            f"{duration_label(row['h200_hours'] * 3600)} at {row['mfu']:.0%} MFU | {byte_size(row['static_bytes'])} | "
            f"{row['state']} |"
        )
    total = plan["total"]
    selection = ""
    if plan.get("selection_tokens"):
        passes = (f"{plan['selection_tokens'] // plan['selection_context']} NIAH prompts through the teacher"
                  if s["strategy"] == "needle" else f"{t['layers'] + 1} teacher passes over the probes")
        selection = f"; {passes}, {_count(plan['selection_tokens'])} tokens in all, {_flops(plan['selection_flops'])}"
    export = plan["export_rule"]
    if plan.get("export_flops"):
        seconds = plan["export_flops"] / (plan["export_mfu"] * H200_DENSE_BF16_TFLOPS * 1e12)
        export += (f"; its {plan['export_bases']} bases over at most {plan['export_docs']} held-out documents of "
                   f"{plan['export_len']:,} tokens: at most {_flops(plan['export_flops'])}, "
                   f"{'' if seconds < 1 else 'about '}{duration_label(seconds)} on one H200 at stage 3's MFU")
    lines += [
        "",
        f"Layer selection (`{plan['select']}`{selection}): {plan['selection_state']}. Export ({export}): "
        f"{plan['export_state']}.",
        f"In all: {_count(total['tokens'])} training tokens, {_flops(total['flops'])} (model FLOPs), about "
        f"{duration_label(total['h200_hours'] * 3600)} on one H200"
        f" ({'with' if plan['compile'] else 'without'} `compile`; the MFU measured by bench-train at the "
        f"{_count(plan['mfu_measured_at'])}-parameter teacher shape, the nearest measured; selection, export and "
        "compilation not included; N GPUs take about 1/N of it).",
        "Micro batch `auto`: the whole batch per forward, halved on one GPU whenever a forward runs out of memory.",
        "Memory before activations: the trained weights, their gradients and AdamW's moments in fp32 (16 bytes per "
        "parameter), plus the frozen teacher in stages 1 and 2; activations come on top, as the micro batch sets "
        "them. FSDP2 or ZeRO-3 over N GPUs divides it by about N.",
    ]
    too_large = [row["stage"] for row in plan["stages"] if row["static_bytes"] > H200_GIB * 2**30]
    if too_large and not plan["on_cpu"]:
        named = " and ".join(too_large) + (" do" if len(too_large) > 1 else " does")
        lines.append(f"**{named} not fit one H200 ({H200_GIB} GiB) even before activations:** shard the training "
                     "over several GPUs (FSDP2 or DeepSpeed ZeRO-3, see the README).")
    lines += [f"**Past the teacher's window:** {warning}" for warning in plan["beyond_teacher_window"]]
    if plan["on_cpu"]:
        lines.append("This run would train on the CPU (`device`, or no GPU visible): "
                     "the H200 times do not apply to it.")
        if plan.get("cpu_matmul_tflops"):
            seconds = total["flops"] / (plan["cpu_matmul_tflops"] * 1e12)
            lines.append(f"At this CPU's fp32 matmul rate, measured now ({plan['cpu_matmul_tflops'] * 1e3:.3g} "
                         f"GFLOP/s), its {_flops(total['flops'])} take at least {duration_label(seconds)}; a training "
                         "step runs well below that rate, so expect several times longer (and a rate measured while "
                         "other work shares the CPU is too low: the bound then too high).")
    if plan["refusal"]:
        lines += ["", f"**As asked, this run would stop at once:** {plan['refusal']}"]
    return "\n".join(lines) + "\n"
