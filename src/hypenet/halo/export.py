"""Export: choose HyPE's logit-scaling base `a` on held-out long documents, then write a remote-code checkpoint.

The attention layers scale the query at position t by ln(t + a) / ln(a) at inference only (SPEC 2.2). `a` is
picked by the mean next-token loss on held-out documents longer than the training context, counting only the
tokens at positions >= train_context: the length-generalisation region that the scaling exists for. When the best
candidate is the largest (or smallest) one, the search goes on past it (export.logit_scaling_extend): the GPU
conversions of the embedded teacher found their lowest loss at 4000-16000, past the grid's largest base, 2000.
`export.logit_scaling_tolerance` > 0 writes the smallest base within that fraction of the lowest loss instead.
The same token losses are also reported per position band ([s, 2s), [2s, 4s), ... from the first scored position s),
a diagnostic of where in the documents each base does well; the choice is made on the overall loss alone.
`export.copy_probe` > 0 also measures, for each base, the loss of spans copied from further back than the training
context (`far_copies`): retrieval past the trained span, which the scaling exists for and which the overall loss barely
sees. It is reported beside the loss; with a tolerance, the base chosen is the one among the near bases that copies
best.
The checkpoint loads with `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`, no hypenet needed.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..eval.copying import DEFAULT_SPAN
from ..eval.perplexity import bucket_edges, token_nlls
from ..model import HypeNetForCausalLM
from ..units import duration_label, length_label

log = logging.getLogger(__name__)

LOGIT_SCALING_CANDIDATES = (None, 50, 100, 200, 300, 500, 700, 1000, 2000)  # None = scaling off
AUTO_MAP = {
    "AutoConfig": "configuration_hypenet.HypeNetConfig",
    "AutoModel": "modeling_hypenet.HypeNetModel",
    "AutoModelForCausalLM": "modeling_hypenet.HypeNetForCausalLM",
}
EXPORT_INFO = "halo_export.json"
HEAD_CHUNK = 1024  # positions per LM-head call, bounding the logits' memory
COPY_SEED = 0  # the copy probe's places are drawn from this seed and the document's index, not the training seed


def scaling_label(a: float | None) -> str:
    return "off" if a is None else f"{a:g}"


def tolerance_rule(tolerance: float, copy_probe: bool) -> str:
    """How `export.logit_scaling_tolerance` picks the base, as the plan and the report say it."""
    near = "the base with the lowest far-copy loss among those" if copy_probe else "the smallest base"
    return f"{near} whose loss is within {100 * tolerance:g}% of the lowest"


def _long_eval_docs(long_docs: Sequence, train_context: int, eval_len: int) -> tuple[list[np.ndarray], int, str | None]:
    """(documents cut to eval_len, first scored position, warning or None)."""
    docs = [np.asarray(d, dtype=np.int64)[:eval_len] for d in long_docs]
    long_enough = [d for d in docs if len(d) > train_context]
    if long_enough:
        return long_enough, train_context, None
    if not docs or max(len(d) for d in docs) < 2:
        raise ValueError("choosing the logit-scaling base needs held-out documents of at least 2 tokens; "
                         "none were given")
    longest = max(docs, key=len)
    scored_from = len(longest) // 2
    return [longest], scored_from, (
        f"no held-out document is longer than the training context ({train_context} tokens); the logit-scaling base "
        f"was chosen on the longest one ({len(longest)} tokens), scoring positions >= {scored_from}. For a choice that "
        "reflects length generalisation, give documents longer than that context: a conversion takes them from its "
        "data's held-out share (--data with long documents, or a larger data.heldout_fraction)."
    )


def position_bands(scored_from: int, longest: int) -> list[tuple[int, int]]:
    """[(s, 2s), (2s, 4s), ...] from s = scored_from, the last band ending at `longest` (the longest document's
    length): half-open ranges of the positions of predicted tokens, which together hold every scored token."""
    if not 1 <= scored_from < longest:
        raise ValueError(f"position bands need 1 <= scored_from < the longest document's length; got scored_from "
                         f"{scored_from}, longest {longest}")
    edges = bucket_edges(longest, scored_from)[1:]  # [0, s, 2s, ..., longest] without the 0
    return list(zip(edges[:-1], edges[1:]))


def band_label(start: int, end: int) -> str:
    """The label of positions [start, end): 16K-32K for [16384, 32768), plain numbers for other than multiples of
    1024 (512-1000)."""
    return f"{length_label(start)}-{length_label(end)}"


@torch.no_grad()
def long_context_loss(model: HypeNetForCausalLM, docs: Sequence[np.ndarray], scored_from: int, device=None,
                      by_band: dict[str, float] | None = None) -> float:
    """Mean next-token NLL over the tokens at positions >= scored_from of each document (one document at a time).

    by_band: filled with the mean NLL per position band (band_label -> loss, position_bands' order) from the same
    token NLLs; their token-weighted mean is the returned loss.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    bands = position_bands(scored_from, max(len(doc) for doc in docs))
    band_sums, band_counts = [0.0] * len(bands), [0] * len(bands)
    total, count = 0.0, 0
    for doc in docs:
        nlls = token_nlls(model, torch.as_tensor(doc, device=device), logits_chunk=HEAD_CHUNK)  # [i]: position i + 1
        scored = nlls[scored_from - 1:]
        total += float(scored.sum())
        count += scored.numel()
        for b, (start, end) in enumerate(bands):
            part = nlls[start - 1:min(end, len(doc)) - 1]
            band_sums[b] += float(part.double().sum())
            band_counts[b] += part.numel()
    if by_band is not None:
        by_band.update({band_label(*band): band_sum / n for band, band_sum, n in zip(bands, band_sums, band_counts)})
    return total / count


def far_copies(doc: np.ndarray, scored_from: int, copies: int, span: int,
               rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """(ids, starts): `doc` with `copies` spans of `span` tokens written again past scored_from, and the copies'
    first positions. The j-th copy lies at a random place within the j-th of `copies` equal slots of positions
    [scored_from, len(doc)); its original starts at least scored_from tokens before it (uniformly between position 0
    and that), so that only a layer that reads that far back can follow it. Copies are written in order, each from
    the tokens as they stand then (an original never overlaps a later copy)."""
    width = (len(doc) - scored_from) // copies if copies > 0 else 0
    if copies < 1 or not 2 <= span <= scored_from or width < span:
        raise ValueError(f"far copies need copies >= 1, 2 <= span <= scored_from and a slot of >= span tokens per "
                         f"copy; got copies {copies}, span {span}, scored_from {scored_from}, a document of "
                         f"{len(doc)} tokens")
    ids = np.array(doc, dtype=np.int64)
    starts = []
    for j in range(copies):
        start = scored_from + j * width + int(rng.integers(0, width - span + 1))
        source = int(rng.integers(0, start - scored_from + 1))  # source + span <= start, as span <= scored_from
        ids[start:start + span] = ids[source:source + span]
        starts.append(start)
    return ids, starts


def far_copy_docs(docs: Sequence[np.ndarray], scored_from: int, copies: int,
                  span: int) -> list[tuple[np.ndarray, list[int]]]:
    """`far_copies` of each document with room for them (seeded by COPY_SEED and the document's index, so every base
    and every run scores the same copies); ValueError when no document has room."""
    probes = [far_copies(doc, scored_from, copies, span, np.random.default_rng([COPY_SEED, i]))
              for i, doc in enumerate(docs) if (len(doc) - scored_from) // copies >= span]
    if not probes:
        longest = max(len(doc) for doc in docs)
        raise ValueError(f"the copy probe needs a held-out document of at least {scored_from + copies * span} tokens "
                         f"({copies} copies of {span} past position {scored_from}); the longest has {longest}: give "
                         "fewer copies (export.copy_probe) or longer documents (export.eval_len)")
    return probes


@torch.no_grad()
def far_copy_loss(model: HypeNetForCausalLM, probes: Sequence[tuple[np.ndarray, list[int]]], span: int,
                  device=None) -> float:
    """Mean next-token NLL of the copies' tokens from each copy's second on (nothing says where a copy begins), over
    `far_copy_docs`' probes, one document at a time."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    total, count = 0.0, 0
    for ids, starts in probes:
        nlls = token_nlls(model, torch.as_tensor(ids, device=device), logits_chunk=HEAD_CHUNK)  # [i]: position i + 1
        for start in starts:
            part = nlls[start:start + span - 1]  # positions start + 1 .. start + span - 1
            total += float(part.double().sum())
            count += part.numel()
    return total / count


def search_lengths(long_docs: Sequence, train_context: int, eval_len: int | None = None, copies: int = 0,
                   copy_span: int = DEFAULT_SPAN) -> list[int]:
    """The lengths of the sequences `choose_logit_scaling_base` runs through the model for each base it measures, with
    the same arguments: the documents it scores (`_long_eval_docs`), then the copy probe's (`far_copy_docs`), if any
    fits. An estimate of the export's time counts them (`plan.export_flops`); [] when the search would stop at once."""
    eval_len = 4 * train_context if eval_len is None else eval_len
    try:
        docs, scored_from, _ = _long_eval_docs(long_docs, train_context, eval_len)
    except ValueError:  # no document to score: the search stops at once
        return []
    try:
        probes = far_copy_docs(docs, scored_from, copies, copy_span) if copies else []
    except ValueError:  # no room for the copy probe: the search skips it
        probes = []
    return [len(doc) for doc in docs] + [len(ids) for ids, _ in probes]


class ScalingSearchWarning(UserWarning):
    """Something the user should know about how `a` was chosen (recorded in the export's report)."""


class ShortDocumentsWarning(ScalingSearchWarning):
    """No held-out document is longer than the training context: `a` was chosen on shorter ones."""


class CopyProbeWarning(ScalingSearchWarning):
    """The held-out documents had no room for the copy probe past the first scored position: it was skipped."""


class GridEdgeWarning(ScalingSearchWarning):
    """The loss was still falling at the largest (or smallest) base tried: the minimum lies beyond it."""


class NearTieWarning(ScalingSearchWarning):
    """Without a tolerance, a base that scales more lies within NEAR_TIE of the lowest loss: the loss cannot tell the
    two apart, while retrieval far past the training length can differ between them."""


NEAR_TIE = 0.001  # the fraction of the lowest loss below which two bases are not told apart by it (results/gpu_convert/
                  # README.md, "Forty-first lease": 0.01% and 0.03% between 8000 and 16000 on two students, whose
                  # answers at 64K differed by 7 and 9 of 90)


def base_progress(done: int, grid: int, extend: int, timings: Sequence[float]) -> str:
    """Where the export's search stands after `done` bases measured, as its log line says it: "3 of 9, 12 s; about 1
    min for the other 6", at the mean time of the bases so far; past the grid, "1 more of at most 4". The search may
    go past the grid (`extend`), which the time left says but cannot count: it depends on the losses."""
    took = duration_label(timings[-1])
    if done > grid:
        return f"{done - grid} more of at most {extend}, {took}"
    left = grid - done
    beyond = f"; up to {extend} more if the lowest loss is at the grid's edge" if extend else ""
    if not left:
        return f"{done} of {grid}, {took}{beyond}"
    mean = sum(timings) / len(timings)
    return f"{done} of {grid}, {took}; about {duration_label(left * mean)} for the other {left}{beyond}"


def _next_base(losses: dict[float | None, float]) -> float | None:
    """The base to try next when the best so far is at an edge of the numeric ones tried (twice the largest, or half
    the smallest while > 1); None when the best is inside them, is `off`, or fewer than two numbers were tried."""
    best = min(losses, key=losses.get)  # the earliest of equal losses
    numeric = sorted(a for a in losses if a is not None)
    if best is None or len(numeric) < 2:
        return None
    if best == numeric[-1]:
        return 2 * best
    if best == numeric[0] and best / 2 > 1:
        return best / 2
    return None


def choose_logit_scaling_base(
    model: HypeNetForCausalLM,
    long_docs: Sequence,
    candidates: Sequence[float | None] = LOGIT_SCALING_CANDIDATES,
    eval_len: int | None = None,
    train_context: int = 512,
    device=None,
    extend: int = 0,
    band_losses: dict | None = None,
    tolerance: float = 0.0,
    copies: int = 0,
    copy_span: int = DEFAULT_SPAN,
    copy_losses: dict | None = None,
    run_dir: str | Path | None = None,
) -> tuple[float | None, dict[float | None, float]]:
    """(the `a` with the lowest long-context loss, loss per base tried); None means scaling off.

    long_docs: token-id arrays of held-out documents; those longer than train_context are cut to eval_len
    (default 4 x train_context) and scored at positions >= train_context. If none is longer, the longest is used
    (with a warning). The model's own `a` is restored afterwards; ties go to the earlier candidate.
    extend: when the best number is the largest of two or more tried, try up to `extend` more bases, each twice the
    last, while the loss keeps falling (half the smallest, while > 1, when the smallest is best): a minimum at the
    edge of the grid is not a minimum. Warns if the loss still falls at the last base tried.
    band_losses: filled with {base: {band label: loss}} for every base tried, the same token losses per position
    band (position_bands), a diagnostic only: the choice is made on the overall loss.
    tolerance: > 0 chooses the most scaling (the smallest base) among the bases whose loss is within this fraction of
    the lowest (`most_scaling_within`), instead of the lowest-loss base itself; the search is unchanged.
    copies: > 0 also measures, for every base tried, the loss of `copies` spans of `copy_span` tokens per document
    copied from further back than train_context (`far_copy_docs`, `far_copy_loss`), into `copy_losses` ({base: loss});
    with a tolerance the choice is then the base that copies best among the near ones (`best_copy_within`). Without
    a tolerance the copy loss is a diagnostic and the choice is the lowest-loss base.
    run_dir: the conversion's folder, which the near-tie warning's `hypenet export` command names.
    """
    bad = [a for a in candidates if a is not None and not a > 1]
    if not candidates or bad:
        raise ValueError(f"logit-scaling candidates must be None (off) or numbers > 1; got {list(candidates)}")
    if extend < 0:
        raise ValueError(f"extend must be >= 0 (more bases to try beyond the candidates); got {extend}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1) (a fraction of the lowest loss, e.g. 0.001); got {tolerance}")
    if train_context < 1:
        raise ValueError(f"train_context must be >= 1 (the first position scored); got {train_context}")
    if copies < 0:
        raise ValueError(f"copies must be >= 0 (spans copied per document for the copy probe; 0 = none); got {copies}")
    eval_len = 4 * train_context if eval_len is None else eval_len
    if eval_len <= train_context:
        raise ValueError(f"eval_len ({eval_len}) must exceed train_context ({train_context}) to test length "
                         "generalisation")
    docs, scored_from, warning = _long_eval_docs(long_docs, train_context, eval_len)
    if warning:
        warnings.warn(warning, ShortDocumentsWarning, stacklevel=2)
    probes = []
    if copies:
        try:
            probes = far_copy_docs(docs, scored_from, copies, copy_span)
        except ValueError as error:  # the training is done: report it rather than lose the export
            rule = "; the base is chosen as without it" if tolerance else ""
            warnings.warn(f"{error}. The copy probe was skipped{rule}", CopyProbeWarning, stacklevel=2)
    original, was_training = model.config.attention_logit_scaling_base, model.training
    model.eval()
    losses: dict[float | None, float] = {}
    copied: dict[float | None, float] = {}

    grid = list(dict.fromkeys(candidates))  # (a base listed twice is measured once)
    timings: list[float] = []

    def measure(a: float | None) -> None:
        began = time.perf_counter()
        model.config.attention_logit_scaling_base = a  # read by build_mixer_context at every forward
        by_band = {}
        losses[a] = long_context_loss(model, docs, scored_from, device, by_band=by_band)
        if band_losses is not None:
            band_losses[a] = by_band
        bands = "".join(f", {band} {loss:.4f}" for band, loss in by_band.items())
        if probes:
            copied[a] = far_copy_loss(model, probes, copy_span, device)
            bands += f", far-copy loss {copied[a]:.4f}"
        timings.append(time.perf_counter() - began)
        log.info("logit-scaling base %s (%s): long-context loss %.4f%s", scaling_label(a),
                 base_progress(len(timings), len(grid), extend, timings), losses[a], bands)

    try:
        for a in grid:
            measure(a)
        for _ in range(extend):
            if (a := _next_base(losses)) is None:
                break
            measure(a)
    finally:
        model.config.attention_logit_scaling_base = original
        model.train(was_training)
    lowest = min(losses, key=losses.get)
    if (beyond := _next_base(losses)) is not None:
        warnings.warn(
            f"the long-context loss was still falling at logit-scaling base {scaling_label(lowest)}, the "
            f"{'largest' if beyond > lowest else 'smallest'} tried: the best base lies beyond it; raise "
            "export.logit_scaling_extend or give candidates past it",
            GridEdgeWarning, stacklevel=2,
        )
    if copy_losses is not None:
        copy_losses.update(copied)
    if not tolerance:
        near = most_scaling_within(losses, NEAR_TIE)
        if near != lowest:
            warnings.warn(
                f"the held-out loss cannot tell logit-scaling base {scaling_label(near)} from the lowest-loss base "
                f"{scaling_label(lowest)} (within {NEAR_TIE:.1%}); on two SmolLM2 students the smaller base retrieved "
                f"more at 64K (docs/EVAL.md). `hypenet eval --logit-scaling-base {scaling_label(near)}` measures it; "
                f"`hypenet export --out {run_dir or 'RUN'} --set export.logit_scaling_tolerance={NEAR_TIE} "
                "--overwrite` writes it",
                NearTieWarning, stacklevel=2,
            )
        return lowest, losses
    return (best_copy_within(losses, copied, tolerance) if copied else most_scaling_within(losses, tolerance)), losses


def near_lowest(losses: dict[float | None, float], tolerance: float) -> list[float | None]:
    """The bases whose loss is at most (1 + tolerance) x the lowest, in the order tried."""
    if not losses:
        raise ValueError("no base was scored: nothing to choose from")
    lowest = min(losses.values())
    return [a for a, loss in losses.items() if loss <= lowest + abs(lowest) * tolerance]


def most_scaling_within(losses: dict[float | None, float], tolerance: float) -> float | None:
    """The base that scales the queries most (the smallest number; `off`, None, scales least) among those whose loss
    is at most (1 + tolerance) x the lowest. The loss is an average over a few documents: bases within a small
    fraction of each other are not told apart by it, while retrieval far past the training length can still differ
    between them (results/gpu_convert/README.md, "Fortieth lease")."""
    numbers = [a for a in near_lowest(losses, tolerance) if a is not None]
    return min(numbers) if numbers else None


def best_copy_within(losses: dict[float | None, float], copy_losses: dict[float | None, float],
                     tolerance: float) -> float | None:
    """The base with the lowest far-copy loss among those whose loss is at most (1 + tolerance) x the lowest (ties
    go to the most scaling): the overall loss rules out the bases that predict text worse, the copies tell apart the
    ones it cannot."""
    near = near_lowest(losses, tolerance)
    missing = [scaling_label(a) for a in near if a not in copy_losses]
    if missing:
        raise ValueError(f"no far-copy loss for base(s) {', '.join(missing)}")
    return min(near, key=lambda a: (copy_losses[a], a is None, a or 0))


def _complete_auto_map(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    config["auto_map"] = {**AUTO_MAP, **config.get("auto_map", {})}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def end_at_the_tokenizers_eos(model, tokenizer) -> None:
    """A teacher whose config names no end token gives a model whose generate() never stops at one: give its config
    (and generation config) the tokenizer's EOS id, with a warning; a model that names one keeps it."""
    eos = tokenizer.eos_token_id
    generation = getattr(model, "generation_config", None)
    if eos is None or model.config.eos_token_id is not None:
        return
    log.warning("the teacher's config names no end token: the export's config takes the tokenizer's EOS %r (id %d), "
                "so that generate() stops there", tokenizer.eos_token, eos)
    model.config.eos_token_id = eos
    if generation is not None and generation.eos_token_id is None:
        model.generation_config = copy.deepcopy(generation)  # (the teacher's own object, shared)
        model.generation_config.eos_token_id = eos


def with_padding(tokenizer):
    """The tokenizer, or a copy that pads with its EOS token when it has no pad token (Llama's and Mistral's have
    none), so that batches of prompts of different lengths (`tok(prompts, padding=True)`) work with the export."""
    if tokenizer.pad_token is not None or tokenizer.eos_token is None:
        return tokenizer
    log.info("the tokenizer has no pad token: the export's pads with its EOS token %r", tokenizer.eos_token)
    padded = copy.deepcopy(tokenizer)
    padded.pad_token = padded.eos_token
    return padded


def export_checkpoint(
    student: HypeNetForCausalLM,
    tokenizer,
    out_dir: str | Path,
    long_docs: Sequence = (),
    candidates: Sequence[float | None] = LOGIT_SCALING_CANDIDATES,
    train_context: int = 512,
    eval_len: int | None = None,
    device=None,
    extra_info: dict | None = None,
    logit_scaling_base: float | None | str = "auto",
    extend: int = 0,
    tolerance: float = 0.0,
    copies: int = 0,
    copy_span: int = DEFAULT_SPAN,
    run_dir: str | Path | None = None,
) -> dict:
    """Choose `a` (unless logit_scaling_base is given: a number, or None for off; `extend`, `tolerance`, `copies`,
    `copy_span` and `run_dir` as in choose_logit_scaling_base), write it into the config, and save model + tokenizer +
    remote code to out_dir atomically (written beside it, then renamed into place).

    Returns {"path", "logit_scaling_base", "losses" (label of each base tried, off first, then ascending -> loss),
    "losses_by_band" (band label -> the same for that position band; a diagnostic), "warnings"}, with a tolerance
    "tolerance" and "lowest_loss_base" (the base the loss alone would choose), and with copies "copy_losses" (label
    -> far-copy loss) and "copy_probe" ({"copies", "span"} per document); the same, plus extra_info, is written to
    out_dir/halo_export.json. Without a search, losses and losses_by_band are empty.
    """
    out_dir = Path(out_dir)
    losses, losses_by_band, notes, chosen_by, copy_info = {}, {}, [], {}, {}
    if logit_scaling_base == "auto" and "attention" not in student.config.mixer_types:
        a, notes = None, ["the model has no attention layer: logit scaling does not apply, so no base was searched"]
    elif logit_scaling_base == "auto":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            by_base_band, by_base_copy = {}, {}
            a, by_base = choose_logit_scaling_base(student, long_docs, candidates, eval_len, train_context, device,
                                                   extend, band_losses=by_base_band, tolerance=tolerance,
                                                   copies=copies, copy_span=copy_span, copy_losses=by_base_copy,
                                                   run_dir=run_dir)
        notes = [str(w.message) for w in caught if issubclass(w.category, ScalingSearchWarning)]  # not torch's
        for note in notes:
            log.warning(note)
        ordered = sorted(by_base, key=lambda base: (base is not None, base or 0))
        losses = {scaling_label(base): by_base[base] for base in ordered}
        for band in by_base_band[ordered[0]]:
            losses_by_band[band] = {scaling_label(base): by_base_band[base][band] for base in ordered}
        if tolerance:
            chosen_by = {"tolerance": tolerance, "lowest_loss_base": min(by_base, key=by_base.get)}
        if by_base_copy:
            copy_info = {"copy_losses": {scaling_label(base): by_base_copy[base] for base in ordered},
                         "copy_probe": {"copies": copies, "span": copy_span}}
    elif logit_scaling_base is None or logit_scaling_base > 1:
        a = logit_scaling_base
    else:
        raise ValueError(f"logit_scaling_base must be 'auto', None (off) or a number > 1; got {logit_scaling_base!r}")
    student.config.attention_logit_scaling_base = a
    end_at_the_tokenizers_eos(student, tokenizer)
    info = {"path": str(out_dir), "logit_scaling_base": a, "losses": losses, "losses_by_band": losses_by_band,
            **chosen_by, **copy_info, "warnings": notes}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out_dir.with_name(f".{out_dir.name}.tmp"), out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)  # safetensors; with hypenet imported it also writes auto_map and the modeling files
    with_padding(tokenizer).save_pretrained(tmp)
    _complete_auto_map(tmp / "config.json")
    (tmp / EXPORT_INFO).write_text(json.dumps({**info, **(extra_info or {})}, indent=2, default=str) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    log.info("exported HypeNet to %s (logit-scaling base %s)", out_dir, scaling_label(a))
    return info


__all__ = [
    "LOGIT_SCALING_CANDIDATES",
    "CopyProbeWarning",
    "GridEdgeWarning",
    "ShortDocumentsWarning",
    "band_label",
    "best_copy_within",
    "choose_logit_scaling_base",
    "export_checkpoint",
    "far_copies",
    "far_copy_docs",
    "far_copy_loss",
    "long_context_loss",
    "most_scaling_within",
    "near_lowest",
    "position_bands",
]
