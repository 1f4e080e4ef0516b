"""Which of a teacher's layers its NIAH answers need: the teacher with full attention kept only in some layers, the
others cut to a sliding window of the last W tokens, NIAH accuracy per choice of layers.

A CPU experiment beside `hypenet eval --evals needle_attention` (results/needle_attention/): a HALO student keeps
softmax attention in a few layers and turns the rest into recurrent layers, which carry no exact long-range lookup.
If the teacher itself stops answering when only the student's attention layers see the whole prompt, the choice of
layers bounds what the student can retrieve, whatever its training. (A window is not a recurrent layer: it keeps the
recent tokens exactly and drops the rest, where a lightning layer keeps a decaying summary of everything.)

    python scripts/attention_knockout.py --layers halo=7,14,16,17,18,28,29 manual=17,20,21,22,23,24,26 \
        --tasks single_1,single_2 --length 4096 --window 256 --out results/needle_attention/knockout_4k

Writes results.json (accuracy per choice and task, the settings) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def windowed_attention(full_layers: set[int], num_layers: int, window: int):
    """While active, the SDPA calls of layers not in full_layers (the i-th call of a forward is layer i mod
    num_layers) attend only to the last `window` keys before each query, causally; the others run unchanged."""
    from hypenet.eval.needle_attention import patched_sdpa, sdpa_arguments

    calls = 0

    def windowed(original, query, key, value, *args, **kwargs):
        nonlocal calls
        layer = calls % num_layers
        calls += 1
        if layer in full_layers:
            return original(query, key, value, *args, **kwargs)
        attn_mask, _, scale = sdpa_arguments(args, kwargs)
        queries, keys = query.shape[-2], key.shape[-2]
        q_pos = torch.arange(keys - queries, keys, device=query.device)[:, None]
        k_pos = torch.arange(keys, device=query.device)[None, :]
        mask = (k_pos <= q_pos) & (q_pos - k_pos < window)
        if attn_mask is not None:
            mask = mask & attn_mask if attn_mask.dtype == torch.bool else \
                torch.where(mask, attn_mask, torch.tensor(float("-inf"), dtype=attn_mask.dtype))
        extra = {name: kwargs[name] for name in ("enable_gqa",) if name in kwargs}
        return original(query, key, value, attn_mask=mask, scale=scale, **extra)

    return patched_sdpa(windowed)


def _choice(text: str) -> tuple[str, list[int]]:
    name, _, layers = text.partition("=")
    return name, [int(x) for x in layers.split(",") if x.strip()]


def main() -> None:
    from hypenet.eval.documents import DEFAULT_HELDOUT_FRACTION, heldout_documents
    from hypenet.eval.models import load_model_for_eval
    from hypenet.eval.niah import build_niah_grid, generate_answers, sample_records, summarize
    from hypenet.teachers.load import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="teacher", help="what `hypenet eval` takes (default: the embedded teacher)")
    parser.add_argument("--layers", nargs="+", type=_choice, required=True, metavar="NAME=L1,L2,...",
                        help="choices of layers that keep full attention (every layer is run as 'all' too)")
    parser.add_argument("--tasks", default="single_1,single_2")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--samples", type=int, default=2, help="samples per task x depth (default 2)")
    parser.add_argument("--window", type=int, default=256, help="keys the other layers see (default 256)")
    parser.add_argument("--haystack", default="builtin", help="document source of the real-text haystacks; held out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    model, tokenizer = load_model_for_eval(args.model, args.device, "auto")
    num_layers = model.config.num_hidden_layers
    tasks = [t for t in args.tasks.split(",") if t]
    docs = heldout_documents(tokenizer, args.haystack, DEFAULT_HELDOUT_FRACTION, 0, progress=False)
    samples = build_niah_grid(tokenizer, tasks, [args.length], [float(d) for d in args.depths.split(",")],
                              args.samples, 0, docs, cache_dir=cache_dir() / "niah")
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "accuracy": {}, "layers": {}}
    for name, layers in [("all", list(range(num_layers))), *args.layers]:
        with windowed_attention(set(layers), num_layers, args.window):
            outputs = generate_answers(model, tokenizer, samples, batch_size=1, progress=False)
        summary = summarize(sample_records(samples, outputs))
        results["layers"][name] = layers
        results["accuracy"][name] = {task: summary["tasks"][task]["accuracy"] for task in tasks}
        print(f"{name}: {results['accuracy'][name]} ({time.perf_counter() - started:.0f}s)", flush=True)
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n| layers with full attention (the others: the last {args.window} tokens) | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for name, accuracy in results["accuracy"].items():
        shown = "all" if name == "all" else f"{name}: {results['layers'][name]}"
        print(f"| {shown} | " + " | ".join(f"{100 * accuracy[t]:.0f}%" for t in tasks) + " |")


if __name__ == "__main__":
    main()
