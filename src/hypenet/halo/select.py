"""HALO layer selection: which k = floor(L/4) layers keep softmax attention (SPEC section 3).

Strategy "halo": for each layer i, run the teacher with only layer i's attention replaced by its stage-1 RNN and
measure recall R_i and commonsense C_i (`probes.py`, or lm-eval tasks). Then

    s_i = (max_j R_j - R_i) / (max_j C_j - C_i + 1e-10),   clipped at 50 (as the reference code)

and attention stays in the k layers with the highest scores: layers whose replacement costs much recall but little
commonsense. Ties (e.g. several layers at the clip) go to the larger recall drop, then to the lower index.

Two tricks keep the sweep cheap. The swap patches the teacher in place (`swap_attention`), so nothing is copied.
And layers before i cannot see the swap, so their outputs are recorded once in an unmodified pass and replayed:
the run for layer i computes only layers i..L-1 (half the model on average).

Stopped part-way (Ctrl-C, SIGTERM, a crash), a sweep given a `ScoredLayers` file loses only the layer in flight: the
scores of each finished layer are saved there with a fingerprint of what decides them, and a later sweep with the same
fingerprint scores only the layers after them (the baseline pass is run again: it records what the layers replay).

Strategy "even": layer round-down((j + 0.5) * L / k) for j = 0..k-1 (the centres of k equal slices).
Strategy "needle": the k layers where the unmodified teacher's attention finds the needle in real text, as
`hypenet eval --evals needle_attention` measures it: RULER's NIAH-Single-2 prompts (a number in held-out text, asked
as a question) of recall_context tokens, and per layer the share of the last token's attention on the needle sentence
for the head that looks most at it, averaged over the prompts (`needle_layers`). One teacher pass per prompt, no
stage 1 needed. On the embedded SmolLM2 (10 prompts at 4K) it gives 17, 20-24 and 26, the layers the GPU recipe sets
by hand (results/needle_attention/; results/gpu_convert/determinism/lease60/).
Strategy "manual": the given layer indices.
Strategy "none": no attention at all, every layer an RNN (the ablation baseline of the paper).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..errors import InvalidInputError
from ..model import HypeNetCache, HypeNetConfig
from ..model.modeling_hypenet import HypeNetRotaryEmbedding, build_mixer_context
from ..teachers import hypenet_config_from_teacher, teacher_attention
from .config import flat_fields, write_text_atomic
from .probes import LmEvalProbe, ProbeSet, build_probes

log = logging.getLogger(__name__)

STRATEGIES = ("halo", "needle", "even", "manual", "none")
NEEDLE_TASK = "single_2"  # strategy "needle": a number in real text, asked as a question (RULER's NIAH-Single-2)
NEEDLE_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # its needles' depths, as `hypenet eval`'s NIAH grid
SCORE_EPS = 1e-10
SCORE_CLIP = 50.0
SCORED_LAYERS = "scored_layers.json"  # the pipeline's partial sweep, in the select stage's folder (`ScoredLayers`)


@dataclass
class SelectionResult:
    """The layers that keep attention and, for "halo", the measurements behind the choice (per layer index)."""

    attention_layers: list[int]
    strategy: str
    num_layers: int
    scores: dict[int, float] | None = None
    recall: dict[int, float] | None = None
    commonsense: dict[int, float] | None = None
    baseline: dict[str, float] | None = None  # the unmodified teacher's recall/commonsense (+ next-token accuracy)
    # per layer, the teacher's attention on the asked needle when a recall probe asks (`needle_attention`)
    needle_attention: dict[int, float] | None = None
    settings: dict = field(default_factory=dict)  # probe settings and timing

    def mixer_types(self, num_layers: int | None = None) -> list[str]:
        num_layers = self.num_layers if num_layers is None else num_layers
        check_layer_indices(self.attention_layers, num_layers)
        chosen = set(self.attention_layers)
        return ["attention" if i in chosen else "lightning" for i in range(num_layers)]

    def to_dict(self) -> dict:
        return asdict(self)


# ---- scores and strategies ----------------------------------------------------------------------------------


def halo_scores(recall: dict[int, float], commonsense: dict[int, float]) -> dict[int, float]:
    """s_i = (max_j R_j - R_i) / (max_j C_j - C_i + eps), clipped at 50."""
    best_recall, best_commonsense = max(recall.values()), max(commonsense.values())
    return {
        i: min(SCORE_CLIP, (best_recall - recall[i]) / (best_commonsense - commonsense[i] + SCORE_EPS)) for i in recall
    }


def top_k_layers(scores: dict[int, float], recall: dict[int, float], k: int) -> list[int]:
    """The k highest-scoring layers (ties: larger recall drop, i.e. lower R_i, then lower index), sorted."""
    ranked = sorted(scores, key=lambda i: (-scores[i], recall[i], i))
    return sorted(ranked[:k])


def even_layers(num_layers: int, k: int) -> list[int]:
    """k evenly spaced layers: floor((j + 0.5) * L / k), j = 0..k-1."""
    return [int((j + 0.5) * num_layers / k) for j in range(k)]


def check_layer_indices(layers: Sequence[int], num_layers: int) -> list[int]:
    """Sorted layer indices, or a ValueError naming the out-of-range or repeated ones."""
    bad = [i for i in layers if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"attention layer indices {bad} are out of range: the teacher has layers 0..{num_layers - 1}")
    repeated = sorted({i for i in layers if list(layers).count(i) > 1})
    if repeated:
        raise ValueError(f"attention layer indices {repeated} are repeated; give each layer once")
    return sorted(layers)


def default_num_attention(num_layers: int) -> int:
    return max(1, num_layers // 4)


def check_selection(strategy: str, num_attention: int | None, manual_layers: Sequence[int] | None,
                    num_layers: int) -> None:
    """A ValueError, before anything trains, for a selection this teacher's `num_layers` cannot have."""
    if strategy == "manual":
        check_layer_indices(list(manual_layers or []), num_layers)
    elif strategy != "none" and num_attention is not None and not 1 <= num_attention <= num_layers:
        raise ValueError(f"select.num_attention must be between 1 and the teacher's {num_layers} layers; got "
                         f"{num_attention}")


# ---- patching the teacher -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _patched_forward(module: nn.Module, forward: Callable):
    """Temporarily replace `module.forward` (an instance attribute shadows the class method; deleting it restores)."""
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


@contextlib.contextmanager
def swap_attention(
    teacher: PreTrainedModel, layer_idx: int, rnn: nn.Module, config: HypeNetConfig | None = None
):
    """Within the block, the teacher's attention in `layer_idx` returns `rnn`'s output instead of its own.

    The returned tuple is the teacher attention's (output, weights=None). Positions come from the `position_ids`
    the decoder layer passes; sequences must be unpadded (the probes never pad; lm-eval runs at batch size 1).
    With a cache (generation) the RNN keeps its recurrent state in a side HypeNetCache, restarted whenever a
    sequence starts at position 0, and the teacher attention still runs so that the teacher's KV cache keeps the
    length its other layers expect; its output is discarded.
    """
    config = config if config is not None else hypenet_config_from_teacher(teacher.config)
    attention = teacher_attention(teacher, layer_idx)
    teacher_forward = attention.forward
    rnn_param = next(rnn.parameters())
    rotary = HypeNetRotaryEmbedding(config).to(rnn_param.device)
    side_cache: list[HypeNetCache] = []

    def forward(hidden_states: torch.Tensor, *args, **kwargs):
        position_ids = kwargs.get("position_ids")
        teacher_cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cache = None
        if teacher_cache is not None:
            if position_ids is None:
                raise ValueError(f"cached decoding through the swapped layer {layer_idx} needs position_ids")
            teacher_forward(hidden_states, *args, **kwargs)
            if not side_cache or int(position_ids.min()) == 0:
                side_cache[:] = [HypeNetCache(config)]
            cache = side_cache[0]
        x = hidden_states.to(rnn_param.dtype)
        ctx = build_mixer_context(config, rotary, x, position_ids=position_ids)
        return rnn(x, ctx, cache).to(hidden_states.dtype), None

    with _patched_forward(attention, forward):
        yield


@contextlib.contextmanager
def _replay_layers_before(layers: nn.ModuleList, layer_idx: int, recorded_output):
    """Layers before `layer_idx` return layer (layer_idx - 1)'s recorded output instead of computing.

    Only the last of them feeds layer `layer_idx`; what the earlier ones return is never read.
    """
    with contextlib.ExitStack() as stack:
        for layer in layers[:layer_idx]:
            stack.enter_context(_patched_forward(layer, lambda *args, **kwargs: recorded_output))
        yield


@contextlib.contextmanager
def _recording_layer_outputs(layers: nn.ModuleList):
    outputs = []
    hooks = [layer.register_forward_hook(lambda module, args, output: outputs.append(output)) for layer in layers]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


# ---- the sweep ------------------------------------------------------------------------------------------------


class ScoredLayers:
    """The layers a sweep has scored so far. With a `path`, they are kept in that JSON file (written whole after each
    layer) with the `fingerprint` of what decides the scores (a JSON mapping: the probes' settings, the teacher, the
    stage-1 layers), and what an earlier sweep left there is read back when made: its scores when the fingerprints
    match (the sweep then skips those layers), none when they differ. `seconds_before`: the time the earlier sweeps
    spent, up to their last saved layer. `after_layer`: called after each layer's scores are written (the pipeline
    saves the stage's time then, so that a killed sweep's time counts as its kept layers do)."""

    def __init__(self, num_layers: int, path: str | Path | None = None, fingerprint: dict | None = None,
                 after_layer: Callable[[], None] | None = None):
        self.num_layers, self.path = num_layers, Path(path) if path is not None else None
        self.after_layer = after_layer
        self.fingerprint = json.loads(json.dumps(fingerprint or {}, sort_keys=True))  # as it reads back
        self.recall: dict[int, float] = {}
        self.commonsense: dict[int, float] = {}
        self.seconds_before = 0.0
        self.started = time.perf_counter()
        if self.path is not None and self.path.is_file():
            self._read()

    def _read(self) -> None:
        try:
            saved = json.loads(self.path.read_text())
            recall = {int(i): float(v) for i, v in saved["recall"].items()}
            commonsense = {int(i): float(v) for i, v in saved["commonsense"].items()}
            fingerprint = saved["fingerprint"]
        except (OSError, ValueError, KeyError, AttributeError) as error:
            log.warning("layer selection: cannot read the layers scored before in %s (%s); starting again at layer 0",
                        self.path, error)
            return
        if fingerprint != self.fingerprint:
            ours, theirs = flat_fields(self.fingerprint), flat_fields(fingerprint)
            differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            log.warning("layer selection: starting again at layer 0: the %d layers scored before (%s) were scored "
                        "with another %s", len(recall), self.path, ", ".join(differ))
            return
        self.recall, self.commonsense = recall, commonsense
        self.seconds_before = float(saved.get("seconds", 0.0))
        log.info("layer selection: resuming at layer %d of %d (%d scored before the stop)",
                 self.next_layer(), self.num_layers, len(recall))

    def next_layer(self) -> int:
        """The first layer not scored yet (num_layers when all are)."""
        return next((i for i in range(self.num_layers) if i not in self.recall), self.num_layers)

    def seconds(self) -> float:
        """The sweeps' time so far: the earlier ones' (to their last saved layer) and this one's."""
        return self.seconds_before + time.perf_counter() - self.started

    def add(self, layer: int, recall: float, commonsense: float) -> None:
        """Keep one more layer's scores (and write them with the others, given a path)."""
        self.recall[layer], self.commonsense[layer] = recall, commonsense
        if self.path is not None:
            write_text_atomic(self.path, json.dumps({
                "fingerprint": self.fingerprint, "num_layers": self.num_layers, "seconds": round(self.seconds(), 2),
                "recall": self.recall, "commonsense": self.commonsense,
            }))
            if self.after_layer is not None:
                self.after_layer()

    def stopped(self, error: BaseException) -> None:
        """Log what a stop of the selection keeps in the file (on Ctrl-C or SIGTERM; on an error once a layer is)."""
        at, total = self.next_layer(), self.num_layers
        interrupted = isinstance(error, KeyboardInterrupt)
        if self.path is None or not (interrupted or at):
            return
        if at == total:
            kept = f"the scores of all {total} layers are kept in {self.path}; --resume chooses from them"
        elif at:
            kept = f"the scores of layers 0-{at - 1} are kept in {self.path}; --resume goes on from layer {at}"
        else:
            kept = "no layer was scored yet"
        why = "interrupted" if interrupted else f"stopped by an error ({type(error).__name__})"
        log.warning("layer selection: %s at layer %d of %d; %s", why, at, total, kept)


def _sweep_layers(score: Callable[[int], tuple[float, float]], scored: ScoredLayers, desc: str,
                  progress: bool) -> tuple[dict[int, float], dict[int, float]]:
    """(R_i, C_i) by layer: score(i) for every layer i that `scored` does not hold already, in order, each added to
    `scored` as it is done (the progress bar counts those held as done)."""
    with tqdm(total=scored.num_layers, initial=len(scored.recall), desc=desc, unit="layer",
              disable=not progress) as bar:
        for i in range(scored.num_layers):
            if i not in scored.recall:
                scored.add(i, *score(i))
                bar.update(1)
    return dict(sorted(scored.recall.items())), dict(sorted(scored.commonsense.items()))


@torch.no_grad()
def probe_sweep(
    teacher: PreTrainedModel,
    probes: ProbeSet,
    stage1_layers: dict[int, nn.Module],
    *,
    config: HypeNetConfig | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
    scored: ScoredLayers | None = None,
) -> tuple[dict[str, float], dict[int, float], dict[int, float]]:
    """(baseline, recall R_i, commonsense C_i) with the built-in probes, one swapped layer at a time; the layers
    `scored` holds already are skipped, and each one done is added to it."""
    config = config if config is not None else hypenet_config_from_teacher(teacher.config)
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    base, head, layers = teacher.model, teacher.get_output_embeddings(), teacher.model.layers
    batches = probes.split(batch_size)

    def final_hidden(batch: ProbeSet) -> torch.Tensor:
        return base(input_ids=batch.input_ids.to(device), use_cache=False).last_hidden_state

    recorded, reference, hits = [], [], []
    for batch in batches:
        with _recording_layer_outputs(layers) as outputs:
            value_hits, top1 = batch.predict(final_hidden(batch), head)
        recorded.append(outputs)
        reference.append(top1)
        hits.append(value_hits)
    baseline = {
        "recall": float(torch.cat(hits).float().mean()),
        "commonsense": 1.0,  # agreement of the teacher with itself
        "next_token_accuracy": probes.next_token_accuracy(torch.cat(reference)),
    }

    def score(i: int) -> tuple[float, float]:
        hits, agree = [], []
        with swap_attention(teacher, i, stage1_layers[i], config):
            for batch, outputs, top1_teacher in zip(batches, recorded, reference):
                with _replay_layers_before(layers, i, outputs[i - 1] if i else None):
                    value_hits, top1 = batch.predict(final_hidden(batch), head)
                hits.append(value_hits)
                agree.append((top1 == top1_teacher).flatten())
        return float(torch.cat(hits).float().mean()), float(torch.cat(agree).float().mean())

    scored = scored if scored is not None else ScoredLayers(len(layers))
    recall, commonsense = _sweep_layers(score, scored, "layer selection", progress)
    return baseline, recall, commonsense


@torch.no_grad()
def needle_attention(teacher: PreTrainedModel, probes: ProbeSet, device: torch.device | str | None = None
                     ) -> dict[int, float] | None:
    """Where the unmodified teacher looks when a recall probe asks for a needle: per layer, the share of the asking
    position's attention on the asked needle's tokens, for the head that looks most at it, averaged over the
    questions. Layers that retrieve together can each be replaced alone at little recall cost, so HALO's scores can
    miss them; this shows them (the conversion report lists both). None when the teacher's attention does not go
    through scaled_dot_product_attention (e.g. attn_implementation="eager")."""
    from ..eval.needle_attention import captured_attention

    if probes.lookups is None or not len(probes.lookups):
        return None
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    sums: torch.Tensor | None = None
    for row in probes.lookups[:, 0].unique().tolist():
        lookups = probes.lookups[probes.lookups[:, 0] == row]
        records: list[torch.Tensor] = []
        with captured_attention(records, rows=lookups[:, 1].tolist()):
            teacher.model(input_ids=probes.input_ids[row:row + 1].to(device), use_cache=False)
        if len(records) != teacher.config.num_hidden_layers:
            return None
        on_needle = torch.stack([  # [layers, questions]: the head that looks most at its needle
            torch.stack([p[0, :, q, start:end].sum(-1).max() for q, (_, _, start, end) in enumerate(lookups.tolist())])
            for p in records]).cpu()
        sums = on_needle.sum(-1) if sums is None else sums + on_needle.sum(-1)
    shares = sums / len(probes.lookups)
    return {i: float(v) for i, v in enumerate(shares)}


def needle_prompt_count(samples: int) -> int:
    """The NIAH prompts strategy "needle" runs for `samples`: rounded up to a whole number per depth."""
    return -(-samples // len(NEEDLE_DEPTHS)) * len(NEEDLE_DEPTHS)


def needle_grid(tokenizer, heldout_docs: Sequence | None, context: int, samples: int, seed: int = 0) -> list:
    """Strategy "needle"'s prompts: `samples` NIAH-Single-2 prompts of `context` tokens (rounded up to a whole number
    per depth of NEEDLE_DEPTHS), their haystacks the held-out documents' text as `hypenet eval --haystack-heldout`
    reads it; a ValueError, naming the setting to change, when there are no held-out documents or the prompts are
    too short for the task's template."""
    from ..eval.documents import token_docs_text
    from ..eval.niah import build_niah_grid

    if not heldout_docs:
        raise ValueError("strategy 'needle' builds its haystacks from held-out documents and the data has none: "
                         "raise data.heldout_fraction")
    per_depth = needle_prompt_count(samples) // len(NEEDLE_DEPTHS)
    try:
        return build_niah_grid(tokenizer, [NEEDLE_TASK], [context], NEEDLE_DEPTHS, per_depth, seed,
                               token_docs_text(tokenizer, heldout_docs))
    except InvalidInputError as error:  # (its advice names `hypenet eval`'s option)
        raise ValueError(f"strategy 'needle': {str(error).split(' (raise')[0]}; raise select.recall_context, the "
                         "prompts' length") from error


@torch.no_grad()
def needle_layers(teacher: PreTrainedModel, tokenizer, heldout_docs: Sequence | None, k: int, *, context: int,
                  samples: int, seed: int = 0, progress: bool = True) -> tuple[list[int], dict[int, float]]:
    """Strategy "needle": the k layers (sorted) whose most-looking head puts the largest share of the last token's
    attention on the needle sentence, over `samples` NIAH-Single-2 prompts of `context` tokens built from the held-out
    documents' text (spread over NEEDLE_DEPTHS; ties go to the lower index), and every layer's share."""
    from ..eval.needle_attention import evaluate_needle_attention

    grid = needle_grid(tokenizer, heldout_docs, context, samples, seed)
    looked = evaluate_needle_attention(teacher, tokenizer, grid, progress=progress)
    num_layers = teacher.config.num_hidden_layers
    if len(looked["layers"]) != num_layers:
        raise ValueError(f"strategy 'needle' reads one attention call per layer and the teacher made "
                         f"{len(looked['layers'])} for its {num_layers} layers: load it with attn_implementation="
                         "'sdpa', or choose another select.strategy")
    shares = dict(enumerate(looked["tasks"][NEEDLE_TASK][str(context)]["max_head"]))
    return sorted(sorted(shares, key=lambda i: (-shares[i], i))[:k]), shares


def _lm_eval_sweep(teacher, tokenizer, stage1_layers, tasks, limit, config, progress, scored=None, include_path=None):
    probe = LmEvalProbe(teacher, tokenizer, tasks, limit, include_path=include_path)
    base_recall, base_commonsense = probe()

    def score(i: int) -> tuple[float, float]:
        with swap_attention(teacher, i, stage1_layers[i], config):
            return probe()

    scored = scored if scored is not None else ScoredLayers(len(teacher.model.layers))
    recall, commonsense = _sweep_layers(score, scored, "layer selection (lm-eval)", progress)
    return {"recall": base_recall, "commonsense": base_commonsense}, recall, commonsense


def select_layers(
    teacher: PreTrainedModel,
    tokenizer,
    stage1_layers: dict[int, nn.Module] | None,
    *,
    strategy: str = "halo",
    num_attention: int | None = None,
    manual_layers: Sequence[int] | None = None,
    heldout_docs: Sequence | None = None,
    recall_samples: int = 32,
    recall_context: int = 1024,
    commonsense_tokens: int = 16384,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    recall_style: str = "repeat",
    lm_eval_tasks: dict[str, list[str]] | None = None,
    lm_eval_limit: int | float | None = None,
    lm_eval_include_path: Sequence[str | Path] | None = None,
    batch_size: int = 8,
    partial: str | Path | None = None,
    fingerprint: dict | None = None,
    after_layer: Callable[[], None] | None = None,
) -> SelectionResult:
    """The layers that keep softmax attention (the rest become lightning layers).

    num_attention: k, default floor(L/4) (at least 1); for "manual" it defaults to len(manual_layers).
    heldout_docs: token-id arrays (TokenizedCorpus.heldout_docs) for the probes' haystacks and commonsense text.
    recall_samples x recall_context tokens of recall probes and commonsense_tokens of held-out text (cut into rows
    of recall_context tokens) go through the teacher once per layer, batch_size rows at a time. On a 2-core CPU
    use small settings: recall_samples=2, recall_context=256, commonsense_tokens=256 take about a minute for the
    30-layer embedded teacher. On a GPU the defaults take seconds (~3 s for it in bf16 on an H200).
    recall_style: how the recall probe asks for a value (halo/probes.py RECALL_QUESTIONS).
    Strategy "needle" reads the teacher's attention on recall_samples NIAH-Single-2 prompts of recall_context tokens
    instead (`needle_layers`; recall_style, commonsense_tokens and batch_size are the halo probes').
    lm_eval_tasks: {"recall": [...], "commonsense": [...]} measures with lm-evaluation-harness instead
    (lm_eval_limit: its per-task example limit; lm_eval_include_path: folders of more task YAML files).
    partial: a JSON file that keeps the "halo" sweep's scores as each layer is done (`ScoredLayers`), so that a sweep
    stopped part-way goes on where it stopped when run again; `fingerprint` (a JSON mapping) names what else decides
    the scores besides the probes' settings here, e.g. the teacher and the stage-1 layers (the pipeline's). The
    result is the same, float for float, as an uninterrupted sweep's; settings["seconds"] counts every sweep's time.
    after_layer: called once each layer's scores are kept in `partial`.
    """
    num_layers = teacher.config.num_hidden_layers
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown layer-selection strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if strategy == "manual":
        if manual_layers is None:
            raise ValueError("strategy 'manual' needs manual_layers, e.g. manual_layers=[2, 3, 6, 8, 9, 21, 25]")
        layers = check_layer_indices(list(manual_layers), num_layers)
        if num_attention is not None and num_attention != len(layers):
            raise ValueError(
                f"num_attention={num_attention} but {len(layers)} manual layers were given {layers}; "
                "drop num_attention or give that many layers"
            )
        return SelectionResult(layers, strategy, num_layers)
    if manual_layers is not None:
        raise ValueError(f"manual_layers is only used with strategy='manual' (strategy is {strategy!r})")
    if strategy == "none":
        if num_attention not in (None, 0):
            raise ValueError(f"strategy 'none' keeps no attention layer; drop num_attention (got {num_attention})")
        return SelectionResult([], strategy, num_layers, settings={"num_attention": 0})
    k = default_num_attention(num_layers) if num_attention is None else num_attention
    if not 1 <= k <= num_layers:
        raise ValueError(f"num_attention must be between 1 and the number of layers ({num_layers}); got {k}")
    if strategy == "even":
        return SelectionResult(even_layers(num_layers, k), strategy, num_layers, settings={"num_attention": k})
    if strategy == "needle":
        started = time.perf_counter()
        layers, looks = needle_layers(teacher, tokenizer, heldout_docs, k, context=recall_context,
                                      samples=recall_samples, seed=seed, progress=progress)
        log.info("the teacher's attention finds the needle most in layers %s (shares %s)", layers,
                 {i: round(looks[i], 3) for i in layers})
        settings = {"probes": f"niah {NEEDLE_TASK}", "recall_samples": recall_samples,
                    "recall_context": recall_context, "seed": seed, "num_attention": k,
                    "seconds": round(time.perf_counter() - started, 2)}
        return SelectionResult(layers, strategy, num_layers, needle_attention=looks, settings=settings)

    missing = [i for i in range(num_layers) if i not in (stage1_layers or {})]
    if missing:
        raise ValueError(f"strategy 'halo' needs a stage-1 RNN for every layer; missing layers {missing}")
    config = hypenet_config_from_teacher(teacher.config)
    if lm_eval_tasks is not None:
        settings = {"probes": "lm-eval", "tasks": lm_eval_tasks, "limit": lm_eval_limit}
        if lm_eval_include_path:
            settings["include_path"] = [str(path) for path in lm_eval_include_path]
    else:
        settings = {
            "probes": "builtin", "recall_samples": recall_samples, "recall_context": recall_context,
            "recall_style": recall_style, "commonsense_tokens": commonsense_tokens, "seed": seed,
        }
    # (the settings so far are the probes': the number of layers kept, k, decides no score; the batch size changes
    # the last bits of a GPU's sums, so a resumed sweep keeps it to give an uninterrupted sweep's floats)
    batching = {} if lm_eval_tasks is not None else {"batch_size": batch_size}
    scored = ScoredLayers(num_layers, partial,
                          {**(fingerprint or {}), "probes": settings, "num_layers": num_layers, **batching},
                          after_layer)
    try:
        if lm_eval_tasks is not None:
            baseline, recall, commonsense = _lm_eval_sweep(
                teacher, tokenizer, stage1_layers, lm_eval_tasks, lm_eval_limit, config, progress, scored,
                lm_eval_include_path,
            )
        else:
            probes = build_probes(
                tokenizer, heldout_docs, recall_samples=recall_samples, context=recall_context,
                commonsense_tokens=commonsense_tokens, seed=seed, recall_style=recall_style,
            )
            baseline, recall, commonsense = probe_sweep(
                teacher, probes, stage1_layers, config=config, batch_size=batch_size, device=device,
                progress=progress, scored=scored,
            )
        looks = needle_attention(teacher, probes, device) if lm_eval_tasks is None else None
    except BaseException as error:  # Ctrl-C, SIGTERM, an error: say what is kept
        scored.stopped(error)
        raise
    settings.update(num_attention=k, seconds=round(scored.seconds(), 2))
    scores = halo_scores(recall, commonsense)
    layers = top_k_layers(scores, recall, k)
    log.info("HALO keeps attention in layers %s (scores %s)", layers, {i: round(scores[i], 3) for i in layers})
    if looks:
        retrieving = sorted(sorted(looks, key=lambda i: -looks[i])[:k])
        log.info("the teacher's attention finds the probes' needles most in layers %s", retrieving)
    return SelectionResult(layers, strategy, num_layers, scores, recall, commonsense, baseline,
                           needle_attention=looks, settings=settings)


__all__ = [
    "SCORED_LAYERS",
    "STRATEGIES",
    "ScoredLayers",
    "SelectionResult",
    "even_layers",
    "halo_scores",
    "needle_attention",
    "needle_grid",
    "needle_prompt_count",
    "needle_layers",
    "probe_sweep",
    "select_layers",
    "swap_attention",
    "top_k_layers",
]
