"""Where the attention layers look when a NIAH question is asked: the attention mass that the prompt's last token (the
position that predicts the answer's first token) puts on the needle sentence, per attention layer and head.

A diagnostic for a student that answers NIAH from one haystack and not from another (results/gpu_convert/, eighth
lease: 100% with repeated filler, 0% with real text at 4K, where the teacher finds the needle): does any attention
layer still find the needle in real text, and the answer is lost after it, or does none?

The probabilities are taken from the model's own attention calls: while `captured_attention` is active, every
`torch.nn.functional.scaled_dot_product_attention` call (transformers' SDPA attention, HypeNet's attention layers)
also computes softmax(q k^T * scale + mask) for its last query (or chosen queries), in fp32, and the call itself
runs unchanged. So it works for any model whose attention goes through SDPA, and costs one [heads, keys] row per
layer and query. HALO's conversion report uses it too, at its recall probe's questions
(`hypenet.halo.select.needle_attention`).

`evaluate_needle_attention` runs the prompts of a NIAH grid (no generation) and returns per task and length, per
attention layer: the mass on the needle averaged over heads and samples, and that of the head that looks most at it.
A head that spread its attention evenly would put needle_tokens / prompt_tokens on it (`uniform`).
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from typing import Sequence

import torch
import torch.nn.functional as F

from .niah import NiahSample, get_task, needle_sentence


def sdpa_arguments(args: tuple, kwargs: dict) -> tuple:
    """(attn_mask, is_causal, scale) of an SDPA call after (query, key, value), from keywords or positions."""
    given = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args))
    given.update(kwargs)
    return given.get("attn_mask"), given.get("is_causal", False), given.get("scale")


@contextlib.contextmanager
def patched_sdpa(replacement):
    """While active, torch.nn.functional.scaled_dot_product_attention is replacement(original, query, key, value,
    *args, **kwargs): every caller that looks it up at call time (transformers' SDPA attention, HypeNet's attention
    layers) goes through it."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda *args, **kwargs: replacement(original, *args, **kwargs)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def query_probabilities(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None = None,
                        is_causal: bool = False, scale: float | None = None, rows: Sequence[int] = (-1,)
                        ) -> torch.Tensor:
    """The attention probabilities of the queries `rows` over all keys, [B, H, len(rows), S] in fp32, as SDPA would
    weigh them. query [B, H, T, D]; key [B, Hkv, S, D] (grouped heads repeated); attn_mask broadcastable to
    [B, H, T, S] (bool: True = attend; float: added). With is_causal, T must equal S."""
    queries = query.shape[-2]
    if is_causal and queries != key.shape[-2]:
        raise ValueError(f"is_causal with {queries} queries over {key.shape[-2]} keys: SDPA aligns the causal "
                         "mask top-left, so the last query would not see the last keys; pass an explicit mask")
    index = torch.tensor([r % queries for r in rows], device=query.device)
    q, k = query.index_select(-2, index).float(), key.float()
    if k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        mask = attn_mask.expand(*attn_mask.shape[:-2], queries, attn_mask.shape[-1]).index_select(-2, index)
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask.float()
    if is_causal:
        scores = scores.masked_fill(torch.arange(k.shape[-2], device=q.device) > index[:, None], -math.inf)
    return torch.softmax(scores, dim=-1)


def last_query_probabilities(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None = None,
                             is_causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """`query_probabilities` of the last query, [B, H, S] (with is_causal it sees every key)."""
    return query_probabilities(query, key, attn_mask, is_causal, scale)[..., 0, :]


@contextlib.contextmanager
def captured_attention(records: list, rows: Sequence[int] | None = None):
    """While active, every scaled_dot_product_attention call appends attention probabilities (fp32, on its device) to
    records, in call order: its last query's, [B, H, S], or with rows those queries', [B, H, len(rows), S]; and
    returns what it would have returned."""
    def recorded(original, query, key, value, *args, **kwargs):
        attn_mask, is_causal, scale = sdpa_arguments(args, kwargs)
        if rows is None:
            records.append(last_query_probabilities(query, key, attn_mask, is_causal, scale))
        else:
            records.append(query_probabilities(query, key, attn_mask, is_causal, scale, rows))
        return original(query, key, value, *args, **kwargs)

    with patched_sdpa(recorded):
        yield records


def needle_token_span(tokenizer, sample: NiahSample) -> tuple[int, int]:
    """[first, last + 1) of the prompt tokens that hold the needle sentence (the tokens whose characters overlap it)."""
    needle = needle_sentence(get_task(sample.task), sample.key, sample.value)
    begin = sample.prompt.find(needle)
    if begin < 0:
        raise ValueError(f"the needle sentence {needle!r} is not in the prompt of this {sample.task} sample")
    end = begin + len(needle)
    encoded = tokenizer(sample.prompt, add_special_tokens=sample.add_special_tokens, return_offsets_mapping=True)
    tokens = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > begin and b > a]
    return tokens[0], tokens[-1] + 1


def attention_layer_names(model, calls: int) -> list[str]:
    """The decoder layer behind each SDPA call of one forward, in order: a HypeNet's attention layers, a
    Transformer's every layer; "call i" when the count does not match."""
    config = model.config
    if getattr(config, "model_type", None) == "hypenet":
        layers = [i for i, mixer in enumerate(config.mixer_types) if mixer == "attention"]
    else:
        layers = list(range(config.num_hidden_layers))
    return [f"layer {i}" for i in layers] if len(layers) == calls else [f"call {i}" for i in range(calls)]


@torch.no_grad()
def evaluate_needle_attention(model, tokenizer, samples: Sequence[NiahSample], progress: bool = True) -> dict:
    """Per task and length: for each attention layer, the needle's share of the last query's attention, averaged
    over heads (`mean`) and for the head that looks most at it (`max_head`), each averaged over samples; `uniform`:
    the share an even spread would give. One prompt at a time, no generation."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    sums: dict = defaultdict(lambda: {"mean": None, "max_head": None, "uniform": 0.0, "samples": 0})
    names: list[str] = []
    for sample in tqdm(samples, desc="needle attention", disable=not progress):
        first, last = needle_token_span(tokenizer, sample)
        ids = tokenizer(sample.prompt, add_special_tokens=sample.add_special_tokens,
                        return_tensors="pt")["input_ids"].to(device)
        records: list[torch.Tensor] = []
        with captured_attention(records):
            model(input_ids=ids, logits_to_keep=1)
        if not records:
            raise ValueError("the model made no scaled_dot_product_attention call: load it with "
                             "attn_implementation='sdpa' (transformers) to see its attention")
        names = names or attention_layer_names(model, len(records))
        on_needle = torch.stack([p[0, :, first:last].sum(-1) for p in records])  # [layers, heads]
        cell = sums[(sample.task, sample.context_len)]
        for name, value in (("mean", on_needle.mean(-1)), ("max_head", on_needle.max(-1).values)):
            cell[name] = value.cpu() if cell[name] is None else cell[name] + value.cpu()
        cell["uniform"] += (last - first) / ids.shape[1]
        cell["samples"] += 1
    result: dict = {"layers": names, "tasks": {}}
    for (task, length), cell in sorted(sums.items()):
        n = cell["samples"]
        result["tasks"].setdefault(task, {})[str(length)] = {
            "mean": (cell["mean"] / n).tolist(), "max_head": (cell["max_head"] / n).tolist(),
            "uniform": cell["uniform"] / n, "samples": n}
    return result


__all__ = ["attention_layer_names", "captured_attention", "evaluate_needle_attention", "last_query_probabilities",
           "needle_token_span", "patched_sdpa", "query_probabilities", "sdpa_arguments"]
