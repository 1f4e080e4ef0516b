"""NIAH answers scored with the answer given (teacher forcing): does a model begin the needle's value, and does it
copy the rest once it has begun?

Generation scores a NIAH answer as a whole: a model that never begins the value and one that begins it and drifts off
after a few characters both score 0. The students of the GPU leases answer NIAH-Single-3 (UUIDs) with prose where the
teacher answers with the UUID, and generation cannot say whether they cannot find the needle or only cannot start the
copy (they copy it, once begun: results/gpu_convert/README.md, "Sixteenth lease"). This appends the value to each
prompt of the same NIAH grid, " " + value by default (the answer prefix ends with "is"; `answer` gives another form,
e.g. ": {value}" as the needle has it), runs the model once over the whole sequence and scores its greedy prediction
of each answer token with the true tokens before it:

- start: every answer token up to the value's first character predicted right, i.e. greedy decoding begins the value
  (with SmolLM2's tokenizer and the default form: the space, then the value's first character);
- first rank: the rank of the value's first token among the vocabulary at its position (0 = the model's choice);
- rest: the share of the value's later tokens predicted right, given the true ones before them (the copy once begun);
- exact: every answer token predicted right, i.e. greedy decoding would write exactly the answer (it can still be
  right in generation by another path, e.g. ": " + value for " " + value, which RULER's string match accepts).

A value is random (7 digits or a UUID), so what a model predicts without having read it is near chance: ~10% per
digit. One sequence per forward pass (no padding), the LM head on the answer's positions only.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .niah import NiahSample

DEFAULT_ANSWER = " {value}"


def check_answer_form(answer: str, name: str = "the answer form") -> None:
    """An answer form holds {value} exactly once (`name`: what the error calls it)."""
    if answer.count("{value}") != 1:
        raise ValueError(f"{name} must hold {{value}} once, e.g. ' {{value}}' or ': {{value}}'; got {answer!r}")


def answer_ids(tokenizer, sample: NiahSample, answer: str = DEFAULT_ANSWER) -> tuple[list[int], list[int], int]:
    """(prompt ids, answer ids, index of the answer token holding the value's first character) for the answer after
    the prompt: `answer` with {value} replaced by the sample's value (e.g. ": {value}", the needle's own words after
    "is"). The answer is encoded on its own, as generation would append it token by token."""
    check_answer_form(answer)
    before = answer.index("{value}")
    prompt = tokenizer(sample.prompt, add_special_tokens=sample.add_special_tokens)["input_ids"]
    encoded = tokenizer(answer.replace("{value}", sample.value), add_special_tokens=False,
                        return_offsets_mapping=True)
    first = next((i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > before), None)
    if first is None:
        raise ValueError(f"the tokenizer's offsets do not locate the value {sample.value!r} in its answer")
    return list(prompt), list(encoded["input_ids"]), first


@torch.no_grad()
def answer_logits(model, prompt: Sequence[int], answer: Sequence[int]) -> torch.Tensor:
    """The model's next-token logits (float32) at the positions predicting each answer token: [len(answer), vocab]."""
    device = next(model.parameters()).device
    ids = torch.tensor([*prompt, *answer], dtype=torch.long, device=device)[None]
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(answer) + 1).logits
    return logits[0, :-1].float()


def score_answer(logits: torch.Tensor, answer: Sequence[int], first: int) -> dict:
    """One sample's scores from `answer_logits` (see the module's doc)."""
    target = torch.tensor(answer, device=logits.device)
    hits = (logits.argmax(-1) == target).cpu().tolist()
    first_logit = logits[first, target[first]]
    rest = hits[first + 1:]
    return {"answer_tokens": len(answer), "start": all(hits[:first + 1]),
            "first_rank": int((logits[first] > first_logit).sum()),
            "first_logprob": float(torch.log_softmax(logits[first], -1)[target[first]]),
            "rest": sum(rest) / len(rest) if rest else None, "exact": all(hits), "hits": hits}


def evaluate_forced(model, tokenizer, samples: Sequence[NiahSample], progress: bool = True,
                    answer: str = DEFAULT_ANSWER) -> list[dict]:
    """One record per sample: where it stands in the grid (task, context_len, depth, seed, key, value), the token the
    model would write first (`choice`, decoded) and its scores; longest prompts first, so an out-of-memory error shows
    at once."""
    several = sorted({sample.task for sample in samples if sample.answers})
    if several:
        raise ValueError(f"niah_forced gives one value as the answer; task(s) {', '.join(several)} ask for several")
    order = sorted(range(len(samples)), key=lambda i: samples[i].n_tokens, reverse=True)
    records: list[dict | None] = [None] * len(samples)
    bar = tqdm(total=sum(s.n_tokens for s in samples), unit="tok", unit_scale=True, desc="NIAH forced",
               disable=not progress)
    for i in order:
        sample = samples[i]
        prompt, answer_tokens, first = answer_ids(tokenizer, sample, answer)
        logits = answer_logits(model, prompt, answer_tokens)
        records[i] = {"task": sample.task, "context_len": sample.context_len, "depth": sample.depth,
                      "seed": sample.seed, "key": sample.key, "value": sample.value,
                      "choice": tokenizer.decode([int(logits[0].argmax())]),
                      **score_answer(logits, answer_tokens, first)}
        bar.update(sample.n_tokens)
    bar.close()
    return records


FIRST_TOKENS_KEPT = 5


def summarize_forced(records: Sequence[dict]) -> dict:
    """Per task and length: samples, start and exact (shares), the median first rank, the mean of rest over the
    samples that have later value tokens; and per task, the same over all its lengths, with `choices`: the tokens the
    model would write first, as [token, samples] from the most frequent (the first FIRST_TOKENS_KEPT; records made
    before `choice` was recorded are not counted)."""
    cells: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[r["task"]][int(r["context_len"])].append(r)

    def cell(rows: list[dict]) -> dict:
        rests = [r["rest"] for r in rows if r["rest"] is not None]
        return {"samples": len(rows), "start": statistics.mean(r["start"] for r in rows),
                "first_rank_median": statistics.median(r["first_rank"] for r in rows),
                "rest": statistics.mean(rests) if rests else None,
                "exact": statistics.mean(r["exact"] for r in rows)}

    def choices(rows: list[dict]) -> list[list]:
        counts = Counter(r["choice"] for r in rows if "choice" in r)
        return [[token, n] for token, n in counts.most_common(FIRST_TOKENS_KEPT)]

    return {"tasks": {task: {"by_length": {str(ln): cell(rows) for ln, rows in sorted(by_length.items())},
                             **cell(every := [r for rows in by_length.values() for r in rows]),
                             "choices": choices(every)}
                      for task, by_length in sorted(cells.items())},
            "num_samples": len(records)}
