"""Copying what was read: how exactly a model continues a span of held-out text that it saw far earlier.

A NIAH answer is a copy: the needle's value, token by token, from where it stands in the context. A student can
find the needle and still copy it wrong (the twelfth GPU lease's student stopped one digit early in most of its
misses). This measures the copy alone, without generation or a question: each sample is the first L - span tokens
of a held-out document followed by `span` tokens taken again from its first quarter, so the copy stands at least
3/4 L tokens after its original. From the copy's second token on, every next token is given by the original; the
model's greedy prediction of each (with the true tokens before it) is scored:

- token accuracy: the share of those span - 1 tokens predicted right;
- second half: the same over the copy's second half, where a model that has recognised the copy should make no
  mistake (the SmolLM2-135M teacher needs ~15 tokens of a copy to follow it: results/copy_eval/);
- last token: the share of samples whose last copied token is right (where a copy stopped short goes wrong);
- exact: the share of samples with every scored token right;
- by position: the accuracy per copied token (from the second), over the samples.

A model predicts much of natural text without having read it: the all-RNN student of the fourteenth GPU lease, which
has no attention to read the original with and finds no NIAH needle, got 30-35% of copied tokens right. So every
sample is scored a second time as a control, with the original replaced by the tokens at the same positions of
another document: `control_accuracy` is the token accuracy without the original, and the gain over it is what
reading the original adds.

The copy's first token is not scored: nothing says where a copy begins.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

DEFAULT_SPAN = 32


def copy_sample(doc: Sequence[int], length: int, span: int, rng: np.random.Generator) -> tuple[list[int], int]:
    """(ids, source): doc's first length - span tokens, then the span tokens at `source` (in the first quarter of
    those) again; len(ids) == length."""
    if span < 2 or length < 8 * span:
        raise ValueError(f"a copy sample needs span >= 2 and length >= 8 x span; got span {span}, length {length}")
    if len(doc) < length - span:
        raise ValueError(f"the document has {len(doc)} tokens, fewer than the {length - span} that a sample of "
                         f"{length} needs")
    context = [int(t) for t in doc[:length - span]]
    source = int(rng.integers(0, (length - span) // 4 - span + 1))
    return context + context[source:source + span], source


def control_sample(ids: Sequence[int], source: int, span: int, docs: Sequence[Sequence[int]],
                   own: int) -> list[int] | None:
    """`ids` (a `copy_sample` of docs[own]) with its original, ids[source:source + span], replaced by the tokens at
    the same positions of the next document long enough (None when there is no other document)."""
    for step in range(1, len(docs)):
        other = docs[(own + step) % len(docs)]
        if len(other) >= source + span:
            return [*ids[:source], *(int(t) for t in other[source:source + span]), *ids[source + span:]]
    return None


@torch.no_grad()
def greedy_predictions(model, input_ids: torch.Tensor, first: int) -> torch.Tensor:
    """The model's greedy next-token predictions at positions first..n-2 of one sequence (predicting tokens
    first+1..n-1): one forward pass of the decoder, the LM head on those positions only."""
    hidden = model.base_model(input_ids=input_ids[None]).last_hidden_state[0, first:-1]
    return model.get_output_embeddings()(hidden).argmax(-1)  # (a softcap, monotonic, keeps the argmax)


def evaluate_copy(model, docs: Sequence[Sequence[int]], lengths: Sequence[int], span: int = DEFAULT_SPAN,
                  samples: int = 8, seed: int = 0, progress: bool = True,
                  predict: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> dict:
    """Copy accuracy per length over `samples` documents (the i-th sample of a length takes docs[i]; documents
    shorter than the sample are skipped and the count says so), and the same samples without their original
    (`control_sample`: the control). `predict(ids, first)` defaults to the model's greedy predictions
    (`greedy_predictions`)."""
    predict = predict or (lambda ids, first: greedy_predictions(model, ids, first))
    device = next(model.parameters()).device if model is not None else "cpu"
    by_length = {}
    bar = tqdm(total=len(lengths) * samples, desc="copy", unit="sample", disable=not progress)
    docs = list(docs)

    def hits_of(ids: list[int], first: int) -> np.ndarray:  # first: the copy's first token; tokens 2..span scored
        ids = torch.tensor(ids, dtype=torch.long, device=device)
        return (predict(ids, first).to(ids.device) == ids[first + 1:]).cpu().numpy()

    for length in lengths:
        scored, controls = [], []
        first = length - span
        for i, doc in enumerate(docs[:samples]):
            bar.update(1)
            if len(doc) < length - span:
                continue
            ids, source = copy_sample(doc, length, span, np.random.default_rng([seed, length, i]))
            scored.append(hits_of(ids, first))
            control = control_sample(ids, source, span, docs, i)
            if control is not None:
                controls.append(hits_of(control, first))
        hits = np.array(scored, dtype=np.float64).reshape(len(scored), span - 1)
        by_length[str(length)] = {
            "samples": len(scored),
            "token_accuracy": float(hits.mean()) if scored else None,
            "second_half": float(hits[:, (span - 1) // 2:].mean()) if scored else None,
            "last_token": float(hits[:, -1].mean()) if scored else None,
            "exact": float(hits.all(axis=1).mean()) if scored else None,
            "by_position": hits.mean(axis=0).tolist() if scored else [],
            "control_samples": len(controls),
            "control_accuracy": float(np.mean(controls)) if controls else None,
        }
    bar.close()
    return {"span": span, "by_length": by_length}
