"""RULER-style needle-in-a-haystack (NIAH-Single-1/2/3, SPEC section 6, and RULER's multi-key, multi-value and
multi-query variants): build prompts, generate, score.

A prompt is: a short instruction, a haystack of the requested token length with the needle sentence
"One of the special magic numbers for {key} is: {value}." at a sentence boundary nearest the requested depth,
then the question and the answer prefix. The model answers greedily; a sample is right when the value string
appears in its output.

The other RULER NIAH tasks place more needles, each at a seeded random depth: multikey_1 three needles of other
keys in the documents; multikey_2/3 a haystack made of nothing but needles of other keys (uuid keys and values in
multikey_3); multivalue four needles of the asked key, all four values asked for; multiquery four keys asked for at
once. A sample's score is then RULER's: the share of the asked values its output contains (`recall`); it is right
when it contains them all.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import math
import os
import random
import re
import uuid
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist, mean
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import InvalidInputError

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# Keys are "adjective-noun" pairs, so a key never collides with a word of the haystack by accident.
_KEY_ADJECTIVES = (
    "amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen", "lucky",
    "mellow", "nimble", "odd", "plain", "quiet", "rusty", "sly", "tidy", "upbeat", "vivid", "witty", "young",
)
_KEY_NOUNS = (
    "anchor", "badger", "candle", "dolphin", "engine", "falcon", "garden", "harbor", "island", "jacket", "kettle",
    "lantern", "meadow", "needle", "orchid", "pepper", "quarry", "river", "saddle", "tunnel", "violin", "walnut",
)

# Length fitting: rebuild the haystack until the prompt is this close to the target (fraction of the target).
LENGTH_TOLERANCE = 0.005
_MAX_FIT_ROUNDS = 4
_SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s)")


@dataclass(frozen=True)
class NiahTask:
    name: str
    # "filler" (repeated FILLER), "documents" (real text) or "needles" (needle sentences of other keys and values)
    haystack: str
    value_kind: str  # "digits" (7-digit number) or "uuid"
    # "words" (an adjective-noun pair: 528 keys), "words3" (adjective-noun-noun: 11,616, for haystacks of needles,
    # whose keys then seldom repeat) or "uuid"
    key_kind: str = "words"
    distractors: int = 0  # needles of other keys besides the asked ones
    values_per_key: int = 1  # needles of each asked key, each with its own value: all are asked for
    queries: int = 1  # keys asked for at once

    @property
    def value_noun(self) -> str:
        return "number" if self.value_kind == "digits" else "uuid"

    @property
    def answers(self) -> int:
        return self.values_per_key * self.queries

    @property
    def max_new_tokens(self) -> int:
        if self.answers > 1:
            return 128  # several values with their separators: RULER's budget
        # 7 digits fit in 12 tokens with room for ": ". A UUID is 36 characters, up to ~30 tokens in BPEs that split
        # digits; 64 leaves room for a model that restates the question before answering.
        return 12 if self.value_kind == "digits" else 64


NIAH_TASKS = {
    "single_1": NiahTask("single_1", haystack="filler", value_kind="digits"),
    "single_2": NiahTask("single_2", haystack="documents", value_kind="digits"),
    "single_3": NiahTask("single_3", haystack="documents", value_kind="uuid"),
    "multikey_1": NiahTask("multikey_1", haystack="documents", value_kind="digits", distractors=3),
    "multikey_2": NiahTask("multikey_2", haystack="needles", value_kind="digits", key_kind="words3"),
    "multikey_3": NiahTask("multikey_3", haystack="needles", value_kind="uuid", key_kind="uuid"),
    "multivalue": NiahTask("multivalue", haystack="documents", value_kind="digits", values_per_key=4),
    "multiquery": NiahTask("multiquery", haystack="documents", value_kind="digits", queries=4),
}
SINGLE_TASKS = ("single_1", "single_2", "single_3")


@dataclass
class NiahSample:
    task: str
    context_len: int  # requested prompt length in tokens
    depth: float  # requested needle depth, fraction of the haystack
    seed: int
    key: str
    value: str
    prompt: str  # exactly the text the model is given (chat template already applied when asked)
    add_special_tokens: bool  # False when the chat template already carries BOS & co.
    n_tokens: int  # prompt length in tokens, as the runner encodes it
    needle_depth: float  # where the needle landed: haystack tokens before it / haystack tokens
    max_new_tokens: int
    keys: list[str] | None = None  # every asked key, when a task asks for several (key is the first)
    answers: list[str] | None = None  # every asked value, when a task asks for several (value is the first)


def scored_right_or_wrong(task: str) -> bool:
    """Whether a task's samples score 1 or 0 (one value asked), so that its accuracies count answers; tasks asking for
    several values score the share found. (A name this version does not know came from a single-value task.)"""
    return task not in NIAH_TASKS or NIAH_TASKS[task].answers == 1


def answers_of(sample: NiahSample) -> list[str]:
    """The values a sample asks for: its one value, or all of them."""
    return list(sample.answers) if sample.answers else [sample.value]


def get_task(name: str) -> NiahTask:
    if name not in NIAH_TASKS:
        raise ValueError(f"unknown NIAH task {name!r}; choose from {list(NIAH_TASKS)}.")
    return NIAH_TASKS[name]


def needle_sentence(task: NiahTask, key: str, value: str) -> str:
    return f"One of the special magic {task.value_noun}s for {key} is: {value}."


def question_and_answer_prefix(task: NiahTask, key: str | Sequence[str]) -> tuple[str, str]:
    noun = task.value_noun
    if task.answers == 1:
        return (f"What is the special magic {noun} for {key} mentioned in the provided text?",
                f"The special magic {noun} for {key} mentioned in the provided text is")
    keys = [key] if isinstance(key, str) else list(key)
    named = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
    return (f"What are all the special magic {noun}s for {named} mentioned in the provided text?",
            f"The special magic {noun}s for {named} mentioned in the provided text are")


def _instruction(task: NiahTask) -> str:
    noun = task.value_noun
    which = "one of them" if task.answers == 1 else "some of them"
    return (f"Some special magic {noun}s are hidden in the text below. Read it carefully: "
            f"you will be asked for {which} at the end.")


def _draw_key(task: NiahTask, rng: random.Random) -> str:
    if task.key_kind == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    key = f"{rng.choice(_KEY_ADJECTIVES)}-{rng.choice(_KEY_NOUNS)}"
    return f"{key}-{rng.choice(_KEY_NOUNS)}" if task.key_kind == "words3" else key


def _draw_value(task: NiahTask, rng: random.Random) -> str:
    if task.value_kind == "digits":
        return str(rng.randint(1_000_000, 9_999_999))
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _draw_unique_value(task: NiahTask, rng: random.Random, used_values: set[str] | None) -> str:
    while True:
        value = _draw_value(task, rng)
        if used_values is None or value not in used_values:
            break
    if used_values is not None:
        used_values.add(value)
    return value


def draw_key_and_value(task: NiahTask, rng: random.Random, used_values: set[str] | None = None) -> tuple[str, str]:
    """A key and a value from `rng`; the value is redrawn until it is not in used_values (which it then joins)."""
    key = _draw_key(task, rng)
    return key, _draw_unique_value(task, rng, used_values)


def draw_asked(task: NiahTask, rng: random.Random, used_values: set[str] | None = None) -> list[tuple[str, str]]:
    """The (key, value) needles a sample asks for: one for the single tasks (`draw_key_and_value`), else
    values_per_key needles for each of `queries` different keys, every value unique in used_values."""
    asked = [draw_key_and_value(task, rng, used_values)]
    keys = [asked[0][0]]
    while len(keys) < task.queries:
        if (key := _draw_key(task, rng)) not in keys:
            keys.append(key)
    for key in keys:
        while sum(k == key for k, _ in asked) < task.values_per_key:
            asked.append((key, _draw_unique_value(task, rng, used_values)))
    return asked


def _draw_other(task: NiahTask, rng: random.Random, asked: Sequence[tuple[str, str]],
                used_keys: set[str] | None = None) -> tuple[str, str]:
    """A needle of a key not asked for, whose value is none of the asked values; with `used_keys`, also a key not
    used yet while 100 draws find one (it then joins them)."""
    keys, values = {k for k, _ in asked}, {v for _, v in asked}
    for _ in range(100):
        if (key := _draw_key(task, rng)) not in keys and not (used_keys and key in used_keys):
            break
    while key in keys:
        key = _draw_key(task, rng)
    if used_keys is not None:
        used_keys.add(key)
    while (value := _draw_value(task, rng)) in values:
        pass
    return key, value


def split_sentences(text: str) -> list[str]:
    """Sentences with their trailing whitespace kept, so that "".join(split_sentences(t)) == t."""
    pieces = _SENTENCE_END.split(text)
    # The whitespace after a sentence end starts the next piece; move it back to the sentence it follows.
    sentences = []
    for piece in pieces:
        stripped = piece.lstrip()
        if sentences:
            sentences[-1] += piece[: len(piece) - len(stripped)]
        if stripped:
            sentences.append(stripped)
    return sentences


class _SentenceStream:
    """Endless haystack sentences with their token counts: FILLER repeated, documents cycled from a seeded start, or
    needle sentences of keys and values other than the asked ones, drawn from `rng`."""

    def __init__(self, tokenizer, task: NiahTask, rng: random.Random, haystack_docs: Sequence[str] | None,
                 asked: Sequence[tuple[str, str]] = ()):
        self._needles = (task, rng, list(asked), set()) if task.haystack == "needles" else None
        if self._needles:
            self._docs = []
        elif task.haystack == "filler":
            # Many copies per read: one tokenizer call per FILLER would dominate building a 64K haystack.
            self._docs = [(FILLER + " ") * 64]
        else:
            self._docs = [doc.strip() + "\n\n" for doc in haystack_docs or () if doc.strip()]
            if not self._docs:
                raise ValueError(
                    f"NIAH task {task.name} needs real documents as its haystack: pass haystack_docs (a list of "
                    f"texts, e.g. from hypenet.eval.documents.load_documents), or use task single_1."
                )
        # Documents are cycled from a seeded start, so samples differ in their haystack too.
        self._next_doc = rng.randrange(len(self._docs)) if self._docs else 0
        self.tokenizer = tokenizer
        self.sentences: list[str] = []
        self.token_counts: list[int] = []

    def ensure(self, n_tokens: int) -> None:
        """Read documents until the stream holds at least n_tokens tokens."""
        total, empty = sum(self.token_counts), 0
        while total < n_tokens:
            if empty > len(self._docs):  # every document read again and no token: it would loop forever
                raise InvalidInputError(
                    "the tokenizer turns the haystack into no tokens: does the model's folder hold its tokenizer "
                    "files (tokenizer.json or tokenizer.model)?")
            if self._needles:
                task, rng, asked, used_keys = self._needles
                sentences = [needle_sentence(task, *_draw_other(task, rng, asked, used_keys)) + " "
                             for _ in range(64)]
            else:
                doc = self._docs[self._next_doc % len(self._docs)]
                self._next_doc += 1
                sentences = split_sentences(doc)
            counts = [len(ids) for ids in self.tokenizer(sentences, add_special_tokens=False)["input_ids"]]
            self.sentences += sentences
            self.token_counts += counts
            added = sum(counts)
            total, empty = total + added, 0 if added else empty + 1


def _haystack(stream: _SentenceStream, budget: int) -> tuple[list[str], list[int], str]:
    """Whole sentences up to `budget` tokens, then the start of the next sentence to fill the gap exactly."""
    stream.ensure(budget + 1)
    sentences, counts, used = [], [], 0
    for sentence, count in zip(stream.sentences, stream.token_counts):
        if used + count > budget:
            break
        sentences.append(sentence)
        counts.append(count)
        used += count
    tail = ""
    gap = budget - used
    if gap > 0:
        ids = stream.tokenizer(stream.sentences[len(sentences)], add_special_tokens=False)["input_ids"]
        tail = stream.tokenizer.decode(ids[:gap])
    return sentences, counts, tail


def _insert_needles(sentences: list[str], counts: list[int], tail: str,
                    needles: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """Haystack text with each (needle, depth) at the sentence boundary nearest its depth (needles at one boundary
    in their given order); also the depth the first needle landed at."""
    total = sum(counts) or 1
    boundaries = [0]
    for count in counts:
        boundaries.append(boundaries[-1] + count)
    at = [min(range(len(boundaries)), key=lambda i: abs(boundaries[i] - depth * total)) for _, depth in needles]
    text, done = "", 0
    for index in sorted(set(at)):
        text += "".join(sentences[done:index])
        done = index
        for needle in (needle for (needle, _), where in zip(needles, at) if where == index):
            text += (" " if text and not text[-1].isspace() else "") + needle
        rest = "".join(sentences[index:]) + tail
        text += " " if rest else ""
    return text + "".join(sentences[done:]) + tail, boundaries[at[0]] / total


def _render_prompt(tokenizer, task: NiahTask, key: str | Sequence[str], haystack: str, chat_template: bool) -> str:
    question, answer_prefix = question_and_answer_prefix(task, key)
    user = f"{_instruction(task)}\n\n{haystack.strip()}\n\n{question}"
    if not chat_template:
        return f"{user} {answer_prefix}"
    messages = [{"role": "user", "content": user}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return rendered + answer_prefix


def count_tokens(tokenizer, text: str, add_special_tokens: bool) -> int:
    return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def build_niah_sample(tokenizer, task: str | NiahTask, context_len: int, depth: float, seed: int,
                      haystack_docs: Sequence[str] | None = None, chat_template: bool = False,
                      used_values: set[str] | None = None) -> NiahSample:
    """One NIAH prompt of ~context_len tokens (within LENGTH_TOLERANCE) with a single needle nearest `depth`.

    Everything random (key, value, where the document haystack starts) comes from `seed`. Pass the same
    `used_values` set to every sample of a run to keep values unique across it.
    """
    task = get_task(task) if isinstance(task, str) else task
    rng = random.Random(seed)
    asked = draw_asked(task, rng, used_values)
    return _build_sample(tokenizer, task, context_len, depth, seed, rng, asked, haystack_docs, chat_template)


def _build_sample(tokenizer, task: NiahTask, context_len: int, depth: float, seed: int, rng: random.Random,
                  asked: Sequence[tuple[str, str]], haystack_docs: Sequence[str] | None,
                  chat_template: bool) -> NiahSample:
    """build_niah_sample after its asked needles are drawn: `rng` goes on to draw the other needles and their depths
    (tasks with more than one needle), then where the haystack starts. The first asked needle goes at `depth`."""
    if not 0.0 <= depth <= 1.0:
        raise InvalidInputError(f"needle depth must be a fraction in [0, 1]; got {depth}.")
    keys = list(dict.fromkeys(key for key, _ in asked))
    needles = [needle_sentence(task, key, value) for key, value in asked]
    distractor_keys: set[str] = set()  # (no two distractors share a key)
    needles += [needle_sentence(task, *_draw_other(task, rng, asked, distractor_keys)) for _ in range(task.distractors)]
    placed = [(needles[0], depth)] + [(needle, rng.random()) for needle in needles[1:]]
    question_keys = keys[0] if len(keys) == 1 else keys
    add_special_tokens = not chat_template
    overhead = count_tokens(tokenizer, _render_prompt(tokenizer, task, question_keys, " ".join(needles),
                                                      chat_template), add_special_tokens)
    if overhead >= context_len:
        raise InvalidInputError(f"context length {context_len} is too short for a {task.name} prompt: the template "
                                f"alone takes {overhead} tokens (raise --niah-lengths).")
    stream = _SentenceStream(tokenizer, task, rng, haystack_docs, asked)
    # Token counts of the parts do not add up exactly (merges at the joins), so correct the budget until it fits.
    budget = context_len - overhead
    for _ in range(_MAX_FIT_ROUNDS):
        sentences, counts, tail = _haystack(stream, budget)
        haystack, needle_depth = _insert_needles(sentences, counts, tail, placed)
        prompt = _render_prompt(tokenizer, task, question_keys, haystack, chat_template)
        n_tokens = count_tokens(tokenizer, prompt, add_special_tokens)
        if abs(n_tokens - context_len) <= LENGTH_TOLERANCE * context_len:
            break
        budget += context_len - n_tokens
    several = task.answers > 1
    return NiahSample(task=task.name, context_len=context_len, depth=depth, seed=seed, key=asked[0][0],
                      value=asked[0][1], prompt=prompt, add_special_tokens=add_special_tokens, n_tokens=n_tokens,
                      needle_depth=needle_depth, max_new_tokens=task.max_new_tokens,
                      keys=keys if len(keys) > 1 else None, answers=[v for _, v in asked] if several else None)


def sample_seed(base_seed: int, task: str, context_len: int, depth: float, index: int) -> int:
    """A stable per-sample seed: the same grid cell gets the same sample in every run and for every model."""
    return zlib.crc32(f"{base_seed}:{task}:{context_len}:{depth:g}:{index}".encode())


GRID_CACHE_FORMAT = 1  # bump when the prompts a grid's settings produce change


def build_niah_grid(tokenizer, tasks: Sequence[str], lengths: Sequence[int], depths: Sequence[float],
                    samples_per_cell: int, seed: int = 0, haystack_docs: Sequence[str] | None = None,
                    chat_template: bool = False, cache_dir: str | Path | None = None,
                    workers: int | None = None) -> list[NiahSample]:
    """Samples for every (task, length, depth) cell; values unique across the whole grid. `workers` threads build
    the prompts (default: the CPU count, at most 8); the grid is the same for any number of them.

    With cache_dir, the grid is saved there under a key of everything that decides it (the tokenizer's full
    definition, the haystack texts, the settings) and loaded next time: a teacher and its students share a
    tokenizer, so a comparison builds its prompts once (minutes at 64K on a few cores).
    """
    path = None
    if cache_dir is not None:
        key = _grid_key(tokenizer, tasks, lengths, depths, samples_per_cell, seed, haystack_docs, chat_template)
        path = Path(cache_dir).expanduser() / f"niah-{key}.json.gz"
        if path.is_file():
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return [NiahSample(**row) for row in json.load(f)]
    # Keys and values are drawn in grid order (each value unique across the grid); the prompts, which is where the
    # time goes (tokenising up to the context length, several times), are then built in threads: the tokenizer's
    # Rust core runs without the GIL, and each sample's haystack depends on its own seeded rng alone.
    used_values: set[str] = set()
    drawn = []
    for task, length, depth, i in itertools.product(tasks, lengths, depths, range(samples_per_cell)):
        sample_rng, niah_task = random.Random(own_seed := sample_seed(seed, task, length, depth, i)), get_task(task)
        drawn.append((niah_task, length, depth, own_seed, sample_rng, draw_asked(niah_task, sample_rng, used_values)))
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        samples = list(pool.map(lambda d: _build_sample(tokenizer, *d, haystack_docs, chat_template), drawn))
    if path is not None:  # written beside, then renamed: a reader never sees half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump([asdict(sample) for sample in samples], f)
        os.replace(tmp, path)
    return samples


def _grid_key(tokenizer, tasks, lengths, depths, samples_per_cell, seed, haystack_docs, chat_template) -> str:
    from hypenet.data.packing import tokenizer_fingerprint

    haystack = hashlib.sha256()
    for doc in haystack_docs or ():
        haystack.update(hashlib.sha256(doc.encode()).digest())
    settings = {"format": GRID_CACHE_FORMAT, "tokenizer": tokenizer_fingerprint(tokenizer),
                "chat_template": getattr(tokenizer, "chat_template", None) if chat_template else None,
                "tasks": [repr(get_task(t)) for t in tasks], "lengths": [int(n) for n in lengths],
                "depths": [float(d) for d in depths], "samples_per_cell": samples_per_cell, "seed": seed,
                "haystack": haystack.hexdigest(), "use_chat_template": chat_template}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def score(sample: NiahSample, output: str) -> bool:
    """RULER's string match: right when the needle's value (every asked value) appears anywhere in the output."""
    return all(value in output for value in answers_of(sample))


def recall(sample: NiahSample, output: str) -> float:
    """RULER's score of a sample (string_match_all): the share of the asked values that appear in the output."""
    values = answers_of(sample)
    return sum(value in output for value in values) / len(values)


# A padded batch through a transformers model builds a dense [B, 1, T, T] attention mask (and SDPA leaves its flash
# kernel for it): at most this many mask elements per padded batch (8 GiB in bf16). At 64K tokens that is one row:
# 8 rows of 61.5K-token prompts asked for a 56 GiB mask on the H200 (results/gpu_convert/README.md, eighth lease).
MAX_PADDED_MASK_ELEMENTS = 2**32


def _batches(samples: Sequence[NiahSample], batch_size: int, max_batch_tokens: int | None,
             max_mask_elements: int | None = None) -> list[list[int]]:
    """Indices grouped by answer budget, then longest first (least padding, and an out-of-memory error shows up in
    the first batch). A batch decodes for its largest budget, so 12-token answers never wait on 64-token ones.
    max_mask_elements: a batch whose prompts differ in length (padded) keeps rows x longest^2 under it."""
    order = sorted(range(len(samples)), key=lambda i: (samples[i].max_new_tokens, samples[i].n_tokens), reverse=True)
    batches, current = [], []
    for i in order:
        # Sorted longest first within a budget, so the batch's first sample sets its padded length.
        longest = samples[current[0]].n_tokens if current else samples[i].n_tokens
        too_many_tokens = max_batch_tokens is not None and longest * (len(current) + 1) > max_batch_tokens
        padded = samples[i].n_tokens != longest  # sorted: then every row after the first is shorter or equal
        too_large_mask = padded and max_mask_elements is not None \
            and longest**2 * (len(current) + 1) > max_mask_elements
        other_budget = bool(current) and samples[current[0]].max_new_tokens != samples[i].max_new_tokens
        if current and (len(current) == batch_size or too_many_tokens or too_large_mask or other_budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def generate_answers(model, tokenizer, samples: Sequence[NiahSample], batch_size: int = 8,
                     max_batch_tokens: int | None = None, progress: bool = True, done: dict[int, str] | None = None,
                     after_batch: Callable[[list[int], list[str]], None] | None = None) -> list[str]:
    """Greedy answers for every sample, batched with left padding; progress (with ETA) counted in prompt tokens.
    Padded batches of a model other than HypeNet (which attends row by row on each row's real tokens) keep their
    dense attention mask under MAX_PADDED_MASK_ELEMENTS.
    done: answers an earlier run gave, by sample index; a batch whose every sample has one is not generated again
    (the same samples and options make the same batches, so the answers are those of a run never stopped).
    after_batch(indices, answers): called after each batch generated, e.g. to keep its answers (`AnswerLog`)."""
    from transformers import GenerationConfig

    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs tokenizer.padding_side = 'left' (see hypenet.eval.models).")
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else tokenizer.eos_token_id
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(samples)
    bar = tqdm(total=sum(s.n_tokens for s in samples), unit="tok", unit_scale=True, desc="NIAH", disable=not progress)
    dense_mask = getattr(model.config, "model_type", None) != "hypenet"
    done = done or {}
    for batch in _batches(samples, batch_size, max_batch_tokens, MAX_PADDED_MASK_ELEMENTS if dense_mask else None):
        chosen = [samples[i] for i in batch]
        if all(i in done for i in batch):
            for i in batch:
                outputs[i] = done[i]
            bar.update(sum(s.n_tokens for s in chosen))
            continue
        encoded = tokenizer([s.prompt for s in chosen], return_tensors="pt", padding=True,
                            add_special_tokens=chosen[0].add_special_tokens).to(device)
        config = GenerationConfig(max_new_tokens=max(s.max_new_tokens for s in chosen), do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        generated = model.generate(**encoded, generation_config=config)
        new_tokens = generated[:, encoded["input_ids"].shape[1]:]
        for row, (i, sample) in enumerate(zip(batch, chosen)):
            # Each sample keeps its own budget, so its answer does not depend on what it was batched with.
            outputs[i] = tokenizer.decode(new_tokens[row, :sample.max_new_tokens], skip_special_tokens=True)
        if after_batch is not None:
            after_batch(batch, [outputs[i] for i in batch])
        bar.update(sum(s.n_tokens for s in chosen))
        bar.set_postfix(ctx=chosen[0].context_len, batch=len(chosen))
    bar.close()
    return outputs


def summarize(records: Sequence[dict]) -> dict:
    """Accuracy per task, length and depth from per-sample records (task, context_len, depth, correct or recall), with
    averages: a task's over its cells, a length's over the tasks run at it, the overall over lengths."""
    cells: dict[str, dict[int, dict[float, list[bool]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:  # a sample's score: right or not, or the share of the values it was asked for (`recall`)
        cells[r["task"]][int(r["context_len"])][float(r["depth"])].append(float(r.get("recall", r["correct"])))
    tasks = {}
    for task, by_length in sorted(cells.items()):
        lengths = {}
        for length in sorted(by_length):
            by_depth = {f"{d:g}": mean(v) for d, v in sorted(by_length[length].items())}
            lengths[str(length)] = {"accuracy": mean(by_depth.values()), "by_depth": by_depth,
                                    "samples": sum(map(len, by_length[length].values()))}
        tasks[task] = {"accuracy": mean(v["accuracy"] for v in lengths.values()), "by_length": lengths}
    all_lengths = sorted({int(ln) for t in tasks.values() for ln in t["by_length"]})
    by_length = {str(ln): mean(t["by_length"][str(ln)]["accuracy"] for t in tasks.values() if str(ln) in t["by_length"])
                 for ln in all_lengths}
    return {"tasks": tasks, "by_length": by_length, "average": mean(by_length.values()) if by_length else None,
            "num_samples": len(records)}


def accuracy_interval(accuracy: float, answers: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on `answers` answers: where the true rate plausibly lies, given
    how few needles a cell holds. Unlike the normal approximation it stays inside [0, 1] and is not empty at 0% or
    100%."""
    if answers <= 0:
        raise ValueError(f"an accuracy interval needs at least one answer, got {answers}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    spread = z * z / answers
    centre = (accuracy + spread / 2) / (1 + spread)
    half = z * math.sqrt(accuracy * (1 - accuracy) / answers + spread / (4 * answers)) / (1 + spread)
    return max(0.0, centre - half), min(1.0, centre + half)


def fisher_exact_p(right_a: int, answers_a: int, right_b: int, answers_b: int) -> float:
    """Two-sided p-value of Fisher's exact test that two models answer right at the same rate: given how many
    answers were right in all, the chance that they split between the models as unevenly as they did, or more so.
    Exact integer arithmetic (the tables' hypergeometric weights), so tables as likely as the observed one count."""
    for right, answers in ((right_a, answers_a), (right_b, answers_b)):
        if answers <= 0 or not 0 <= right <= answers:
            raise ValueError(f"{right} right of {answers} answers: each model needs answers, and at most as many "
                             "right as it has")
    right = right_a + right_b

    def ways(k: int) -> int:  # tables with k right for model a: how many ways the right answers fall so
        return math.comb(answers_a, k) * math.comb(answers_b, right - k)

    observed = ways(right_a)
    extreme = sum(w for k in range(max(0, right - answers_b), min(answers_a, right) + 1) if (w := ways(k)) <= observed)
    return extreme / math.comb(answers_a + answers_b, right)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's exact test for two models asked the same prompts: of the prompts exactly one of
    them answered right (only_a by model a, only_b by model b), the chance that a fair coin splits them this unevenly
    or more so. Prompts both (or neither) answered right say nothing about which model is better, so unlike
    `fisher_exact_p` it pairs the answers and is not diluted by them. 1 when no prompt split the models."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts of prompts only one model answered right must be >= 0; got {only_a} and {only_b}")
    split = only_a + only_b
    tail = sum(math.comb(split, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**split)


def sample_records(samples: Sequence[NiahSample], outputs: Sequence[str]) -> list[dict]:
    """One JSON-able row per sample (prompt left out: it is rebuilt from the seed), for inspecting failures."""
    rows = []
    for sample, output in zip(samples, outputs):
        row = asdict(sample)
        del row["prompt"]
        for name in ("keys", "answers"):  # only in tasks that ask for several values
            if row[name] is None:
                del row[name]
        scores = {"recall": recall(sample, output)} if sample.answers else {}  # a task asking for several values
        rows.append({**row, "output": output, "correct": score(sample, output), **scores})
    return rows


class AnswerLog:
    """A NIAH run's answers as they are generated, in a JSON-lines file: one row per sample as `sample_records` writes
    it, with its prompt's SHA-256, appended after each batch. A run stopped part-way (Ctrl-C, a deadline, a crash)
    keeps the batches it finished there, and the same run started again on the same file generates only the rest
    (`generate_answers`' `done`). Which model answered is for the caller to check (`hypenet eval --resume` does)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def key(sample: NiahSample) -> tuple[str, int]:
        return hashlib.sha256(sample.prompt.encode()).hexdigest(), sample.max_new_tokens

    def read(self, samples: Sequence[NiahSample]) -> dict[int, str]:
        """The answers kept for `samples`, by index (a line cut short by a kill is skipped)."""
        if not self.path.is_file():
            return {}
        kept = {}
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
                kept[(row["prompt_sha256"], row["max_new_tokens"])] = row["output"]
            except (ValueError, KeyError, TypeError):
                continue
        return {i: kept[key] for i, sample in enumerate(samples) if (key := self.key(sample)) in kept}

    def append(self, samples: Sequence[NiahSample], indices: list[int], outputs: list[str]) -> None:
        rows = sample_records([samples[i] for i in indices], outputs)
        cut = False
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        with open(self.path, "a") as f:
            f.write("\n" * bool(cut))  # (after a line that a kill cut short, the next row starts on its own line)
            f.writelines(json.dumps({**row, "prompt_sha256": self.key(samples[i])[0]}) + "\n"
                         for row, i in zip(rows, indices))
            f.flush()
            os.fsync(f.fileno())


def evaluate_niah(model, tokenizer, tasks: Sequence[str], lengths: Sequence[int], depths: Sequence[float],
                  samples_per_cell: int = 4, seed: int = 0, haystack_docs: Sequence[str] | None = None,
                  chat_template: bool = False, batch_size: int = 8, max_batch_tokens: int | None = None,
                  progress: bool = True, cache_dir: str | Path | None = None,
                  timing: dict | None = None, answers: str | Path | None = None,
                  log: Callable[[str], None] | None = None) -> list[dict]:
    """Build the grid (from cache_dir when it was built before), generate, score: per-sample records (summarize
    them with `summarize`). `timing`, if given, receives the seconds spent building and generating.
    answers: an `AnswerLog` file, kept as the answers come and read back first (a stopped run's batches are not
    generated again); `log` is told how many were read back."""
    import time

    started = time.perf_counter()
    samples = build_niah_grid(tokenizer, tasks, lengths, depths, samples_per_cell, seed, haystack_docs, chat_template,
                              cache_dir)
    built = time.perf_counter()
    kept = AnswerLog(answers) if answers is not None else None
    done = kept.read(samples) if kept else None
    if done and log is not None:
        log(f"NIAH: {len(done)} of {len(samples)} answers read back from {kept.path}")
    outputs = generate_answers(model, tokenizer, samples, batch_size, max_batch_tokens, progress, done,
                               (lambda indices, out: kept.append(samples, indices, out)) if kept else None)
    if timing is not None:
        timing.update(build_s=built - started, generate_s=time.perf_counter() - built)
    return sample_records(samples, outputs)
