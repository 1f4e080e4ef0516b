"""Cheap offline probes for HALO layer selection: recall R and commonsense C, both in [0, 1] (SPEC section 3).

The paper measures R and C with lm-eval tasks (SQuAD/FDA/SWDE, HellaSwag/ARC), one full evaluation per layer.
The built-in probes need no network and cost a few batched forward passes per layer:

- Recall: multi-key needle-in-a-haystack. A haystack of held-out text (or RULER's filler sentences) hides needles
  "The special magic number for {key} is {value}." at random depths; the sample ends by stating every key again,
  shuffled, "The special magic number for {key} is", followed by its value (recall_style "repeat"), or asks for it
  in other words, "What is the number for {key} mentioned in the text above? ..." ("question"): a copying head can
  complete the first, the second has to be answered by the key, as RULER's NIAH questions are. The values are
  scored under teacher forcing: R = fraction of value tokens whose argmax prediction is right. A 6-digit value is
  several tokens, and each of them can only be predicted by retrieving the matching needle from far back in the
  context.
- Commonsense: top-1 next-token agreement with the unmodified teacher on held-out text, at every position:
  how much of the teacher's language modelling survives the replacement.

Every sequence has exactly `context` tokens, so batches need no padding. The optional lm-eval route
(`LmEvalProbe`) runs real tasks through lm-evaluation-harness' HF adapter around the (modified) teacher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Keys of the recall needles: common single words, so that any tokenizer splits them into few tokens.
KEY_WORDS = (
    "apple", "river", "mountain", "violin", "garden", "lantern", "harbor", "pencil", "castle", "forest", "rocket",
    "candle", "meadow", "bridge", "falcon", "island", "marble", "orchard", "planet", "saddle", "tiger", "velvet",
    "walnut", "window", "anchor", "basket", "copper", "dragon", "engine", "feather", "glacier", "hammer", "jacket",
    "kettle", "ladder", "mirror", "oyster", "pepper", "quartz", "ribbon", "silver", "tunnel", "umbrella", "valley",
    "wagon", "yellow", "zebra", "compass",
)
NEEDLE_PREFIX = " The special magic number for {key} is"
NEEDLE_VALUE = " {value}"
NEEDLE_END = "."
# How a recall sample asks for a needle's value: the words just before the value.
# "repeat" says the needle's own words again, which a copying (induction) head can complete;
# "question" asks in other words, as RULER's NIAH does, so the answer has to be found by the key.
RECALL_QUESTIONS = {
    "repeat": NEEDLE_PREFIX,
    "question": " What is the number for {key} mentioned in the text above? The number for {key} mentioned in the text"
                " above is",
}
VALUE_DIGITS = 6
# RULER NIAH-Single-1's haystack (SPEC section 6), used when no held-out documents are given.
FILLER_TEXT = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
TOKENS_PER_KEY = 64  # one needle per 64 tokens of context: 4 keys at 256 tokens, 16 at 1024


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class ProbeSet:
    """Probe sequences and what is scored in them.

    input_ids: [N, context] token ids (recall samples first, then held-out text chunks).
    value_slots: [M, 2] (row, position) whose next-token prediction must be a value token.
    value_tokens: [M] the value token expected at each slot.
    is_text: [N] True for held-out text rows (the commonsense probe).
    lookups: [K, 4] (row, position, needle start, needle end) per question of a recall row: the position that
        predicts the value's first token, and the tokens [start, end) of the needle it asks for.
    """

    input_ids: torch.Tensor
    value_slots: torch.Tensor
    value_tokens: torch.Tensor
    is_text: torch.Tensor
    lookups: torch.Tensor | None = None

    @property
    def context(self) -> int:
        return self.input_ids.shape[1]

    def split(self, batch_size: int) -> list[ProbeSet]:
        """Consecutive row batches, with slots renumbered to their batch."""
        batches = []
        for start in range(0, len(self.input_ids), batch_size):
            stop = start + batch_size
            in_batch = (self.value_slots[:, 0] >= start) & (self.value_slots[:, 0] < stop)
            slots = self.value_slots[in_batch] - torch.tensor([start, 0])
            rows = slice(start, stop)
            lookups = None
            if self.lookups is not None:
                in_rows = (self.lookups[:, 0] >= start) & (self.lookups[:, 0] < stop)
                lookups = self.lookups[in_rows] - torch.tensor([start, 0, 0, 0])
            batches.append(ProbeSet(self.input_ids[rows], slots, self.value_tokens[in_batch], self.is_text[rows],
                                    lookups))
        return batches

    @torch.no_grad()
    def predict(self, hidden: torch.Tensor, head: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """From final hidden states [N, T, D] of these rows: (value hits [M] bool, text top-1 ids [rows, T]).

        The LM head runs only where something is scored, one text row at a time to bound the logits' memory.
        """
        slots = self.value_slots.to(hidden.device)
        value_hits = head(hidden[slots[:, 0], slots[:, 1]]).argmax(-1).cpu() == self.value_tokens
        text_top1 = [head(row).argmax(-1).cpu() for row in hidden[self.is_text.to(hidden.device)]]
        top1 = torch.stack(text_top1) if text_top1 else torch.empty(0, self.context, dtype=torch.long)
        return value_hits, top1

    def next_token_accuracy(self, text_top1: torch.Tensor) -> float:
        """Top-1 next-token accuracy on these rows' held-out text (the baseline's absolute language-model quality)."""
        targets = self.input_ids[self.is_text][:, 1:]
        return float((text_top1[:, :-1] == targets).float().mean()) if targets.numel() else float("nan")


def _token_stream(heldout_docs: Sequence | None, tokenizer, needed: int) -> np.ndarray:
    """At least `needed` tokens of held-out text (docs concatenated, repeated if short); filler when none are given."""
    if heldout_docs:
        parts, total = [], 0
        for doc in heldout_docs:
            parts.append(np.asarray(doc, dtype=np.int64))
            total += len(parts[-1])
            if total >= needed:
                break
        stream = np.concatenate(parts)
    else:
        stream = np.asarray(_encode(tokenizer, FILLER_TEXT), dtype=np.int64)
    if len(stream) == 0:
        raise ValueError("the held-out documents are empty; pass documents with tokens (TokenizedCorpus.heldout_docs)")
    return np.tile(stream, math.ceil(needed / len(stream)))[:needed] if len(stream) < needed else stream


def build_probes(
    tokenizer,
    heldout_docs: Sequence | None = None,
    *,
    recall_samples: int = 32,
    context: int = 1024,
    commonsense_tokens: int = 16384,
    seed: int = 0,
    recall_style: str = "repeat",
) -> ProbeSet:
    """The recall and commonsense probe sequences, all of `context` tokens, reproducible from `seed`.

    heldout_docs: token-id arrays of held-out documents (haystacks and the commonsense text); without them the
    recall haystack is RULER's filler and the commonsense text is hypenet's built-in documents.
    recall_style: how the recall samples ask for a value (RECALL_QUESTIONS): "repeat" the needle's words or ask a
    "question" in other words.
    """
    if recall_samples < 1 or commonsense_tokens < 1:
        raise ValueError(
            f"recall_samples ({recall_samples}) and commonsense_tokens ({commonsense_tokens}) must both be >= 1"
        )
    if recall_style not in RECALL_QUESTIONS:
        raise ValueError(f"unknown recall_style {recall_style!r}; choose one of {list(RECALL_QUESTIONS)}")
    rng = np.random.default_rng(seed)
    text_rows = math.ceil(commonsense_tokens / context)
    heldout_text = heldout_docs if heldout_docs else _builtin_documents(tokenizer, text_rows * context)
    text = _token_stream(heldout_text, tokenizer, text_rows * context)
    haystack = _token_stream(heldout_docs, tokenizer, context)

    rows, slots, targets, lookups = [], [], [], []
    for sample in range(recall_samples):
        ids, value_positions, questions = _recall_sample(tokenizer, haystack, context, rng, recall_style)
        rows.append(ids)
        for p in value_positions:
            slots.append((sample, p - 1))
            targets.append(ids[p])
        lookups += [(sample, *question) for question in questions]
    text_chunks = text[: text_rows * context].reshape(text_rows, context)
    input_ids = torch.tensor(np.concatenate([np.stack(rows), text_chunks]), dtype=torch.long)
    is_text = torch.arange(len(input_ids)) >= recall_samples
    return ProbeSet(input_ids, torch.tensor(slots, dtype=torch.long), torch.tensor(targets, dtype=torch.long), is_text,
                    torch.tensor(lookups, dtype=torch.long))


def _recall_sample(
    tokenizer, haystack: np.ndarray, context: int, rng: np.random.Generator, style: str = "repeat"
) -> tuple[np.ndarray, list[int], list[tuple[int, int, int]]]:
    """One multi-key haystack of exactly `context` tokens, the positions of its scored value tokens, and per question
    (the position predicting its value's first token, the asked needle's first token, one past its last)."""
    num_keys = min(len(KEY_WORDS), max(1, context // TOKENS_PER_KEY))
    while True:
        keys = rng.choice(len(KEY_WORDS), size=num_keys, replace=False)
        values = rng.choice(9 * 10 ** (VALUE_DIGITS - 1), size=num_keys, replace=False) + 10 ** (VALUE_DIGITS - 1)
        prefixes = [_encode(tokenizer, NEEDLE_PREFIX.format(key=KEY_WORDS[k])) for k in keys]
        asks = [_encode(tokenizer, RECALL_QUESTIONS[style].format(key=KEY_WORDS[k])) for k in keys]
        value_ids = [_encode(tokenizer, NEEDLE_VALUE.format(value=v)) for v in values]
        end = _encode(tokenizer, NEEDLE_END)
        needles = [p + v + end for p, v in zip(prefixes, value_ids)]
        hay_len = context - sum(len(n) for n in needles) - sum(len(a + v + end) for a, v in zip(asks, value_ids))
        if hay_len >= 0:
            break
        if num_keys == 1:
            raise ValueError(f"context={context} tokens cannot hold one needle and its question; use at least 64")
        num_keys -= 1
    start = int(rng.integers(0, len(haystack) - hay_len + 1))
    hay = haystack[start : start + hay_len].tolist()
    cuts = np.sort(rng.integers(0, hay_len + 1, size=num_keys)).tolist()
    ids, previous, spans = [], 0, []
    for cut, needle in zip(cuts, needles):
        ids += hay[previous:cut]
        spans.append((len(ids), len(ids) + len(needle)))
        ids += needle
        previous = cut
    ids += hay[previous:]
    value_positions, questions = [], []
    for j in rng.permutation(num_keys):
        ids += asks[j]
        questions.append((len(ids) - 1, *spans[j]))
        value_positions += range(len(ids), len(ids) + len(value_ids[j]))
        ids += value_ids[j] + end
    return np.asarray(ids, dtype=np.int64), value_positions, questions


def _builtin_documents(tokenizer, needed: int) -> list[np.ndarray]:
    """hypenet's built-in English documents, tokenised until `needed` tokens are there."""
    try:
        from ..data import iter_documents
    except ImportError as error:
        raise ImportError(
            "the commonsense probe needs held-out text: pass heldout_docs (TokenizedCorpus.heldout_docs)"
        ) from error
    docs, total = [], 0
    for text in iter_documents("builtin"):
        docs.append(np.asarray(_encode(tokenizer, text), dtype=np.int64))
        total += len(docs[-1])
        if total >= needed:
            break
    return docs


# ---- lm-evaluation-harness ---------------------------------------------------------------------------------

# The first of these a task reports is its score (normalised accuracy first, as the paper's C uses).
LM_EVAL_METRICS = ("acc_norm", "acc", "contains", "exact_match", "em", "f1")
INCLUDE_OPTION = "select.lm_eval_include_path"


class LmEvalProbe:
    """R and C from lm-eval tasks, run through lm-eval's HF adapter around a model that may be modified in place.

    tasks: {"recall": [...], "commonsense": [...]}, e.g. {"recall": ["squad_completion", "fda", "swde"],
    "commonsense": ["hellaswag", "arc_easy", "arc_challenge"]} as in the paper; include_path: folders of more task
    YAML files. Each side is the mean of its tasks' scores. Runs at batch size 1 (swapped RNN layers assume unpadded
    sequences). Scored as `hypenet eval --lm-eval` scores (`eval.lm_eval_adapter.score_tasks`: seeded, the same
    errors for an unknown task or a dataset that cannot be fetched).
    """

    def __init__(self, model, tokenizer, tasks: dict[str, list[str]], limit: int | float | None = None,
                 include_path: str | Path | Sequence[str | Path] | None = None):
        if not isinstance(tasks, dict) or not tasks.get("recall") or not tasks.get("commonsense"):
            raise ValueError(
                "lm_eval_tasks must be a dict with non-empty task lists under 'recall' and 'commonsense', e.g. "
                "{'recall': ['squad_completion', 'fda', 'swde'], 'commonsense': ['hellaswag', 'arc_easy']}; "
                f"got {tasks!r}"
            )
        from ..eval.lm_eval_adapter import check_tasks, hf_lm

        try:
            check_tasks([*tasks["recall"], *tasks["commonsense"]], include_path, INCLUDE_OPTION)
        except ImportError as error:
            raise ImportError(
                "lm-evaluation-harness is not installed: run `pip install 'hypenet[eval]'` (or `pip install lm-eval`) "
                "to select layers by lm-eval tasks, or leave select.lm_eval_recall and select.lm_eval_commonsense "
                "unset to use the built-in offline probes") from error
        self.lm = hf_lm(model, tokenizer, batch_size=1)
        self.tasks, self.limit, self.include_path = tasks, limit, include_path

    def _mean_score(self, tasks: list[str]) -> float:
        from ..eval.lm_eval_adapter import score_tasks

        results = score_tasks(self.lm, tasks, self.include_path, limit=self.limit, include_option=INCLUDE_OPTION)
        scores = []
        for task in tasks:
            metrics = results[task]
            metric = next((m for m in LM_EVAL_METRICS if m in metrics), None)
            if metric is None:
                raise ValueError(
                    f"lm-eval task {task!r} reports none of {LM_EVAL_METRICS}; it reported "
                    f"{sorted(m for m in metrics if m != 'samples')}"
                )
            scores.append(float(metrics[metric]))
        return sum(scores) / len(scores)

    def __call__(self) -> tuple[float, float]:
        return self._mean_score(self.tasks["recall"]), self._mean_score(self.tasks["commonsense"])


__all__ = ["KEY_WORDS", "RECALL_QUESTIONS", "LmEvalProbe", "ProbeSet", "build_probes"]
