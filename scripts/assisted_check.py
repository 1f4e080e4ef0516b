"""Prompt-lookup decoding through `generate()` against plain greedy decoding, on a copying task: are the tokens the
same, how much faster is it, and how much of the text does the model copy?

    python scripts/assisted_check.py teacher runs/smollm2-hypenet/model [--length 1024 --new 64 --lookup 10]

Prompts: --docs held-out documents of --source (default the built-in corpus; HALO's split, as `hypenet eval` takes
them for perplexity), cut to --length tokens and followed by their first --cue tokens again; a model that copies
continues with the document's next tokens, and prompt lookup drafts them from the prompt. Both runs are greedy, batch
1, on this machine's CPU (fp32) or --device (bf16 on a GPU; --dtype to choose).
Where the two part, the first token that differs is scored once more by one forward pass over the prompt and greedy's
tokens before it: the gap between that position's two largest logits (`margin`) tells a near tie, which rounding in
another order can flip (prompt lookup verifies several tokens in one pass, greedy one at a time), from a real
difference.
Prints a markdown table and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hypenet.eval.documents import heldout_token_docs  # noqa: E402
from hypenet.eval.models import load_model_for_eval  # noqa: E402


def copy_prompts(docs: list[np.ndarray], length: int, cue: int, new: int) -> list[tuple[torch.Tensor, list[int]]]:
    """(prompt, the tokens a copier writes next) per document: the document's first `length` tokens, then its first
    `cue` tokens again; copying continues with tokens cue .. cue + new."""
    out = []
    for doc in docs:
        prompt = np.concatenate([doc[:length], doc[:cue]])
        out.append((torch.as_tensor(prompt, dtype=torch.long)[None], doc[cue:cue + new].tolist()))
    return out


def copied_prefix(generated: list[int], expected: list[int]) -> int:
    """How many generated tokens follow the copy before the first difference."""
    n = 0
    for got, want in zip(generated, expected):
        if got != want:
            break
        n += 1
    return n


def timed_generate(model, prompt: torch.Tensor, new: int, **extra) -> tuple[list[int], float]:
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt.to(model.device), attention_mask=torch.ones_like(prompt).to(model.device),
                             max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, **extra)
    if out.is_cuda:
        torch.cuda.synchronize()
    return out[0, prompt.shape[1]:].tolist(), time.perf_counter() - start


def parting(model, prompt: torch.Tensor, greedy: list[int], lookup: list[int]) -> dict | None:
    """Where greedy's and prompt lookup's tokens first differ, and the gap between the two largest logits there (one
    forward pass over the prompt and greedy's tokens before it); None where they are the same."""
    at = next((i for i, (a, b) in enumerate(zip(greedy, lookup)) if a != b), None)
    if at is None:
        return None
    ids = torch.cat([prompt[0], torch.as_tensor(greedy[:at], dtype=torch.long)])[None].to(model.device)
    with torch.no_grad():
        logits = model(ids, logits_to_keep=1).logits[0, -1].float()
    top = logits.topk(2).values
    return {"at": at, "margin": float(top[0] - top[1]),
            "greedy_minus_lookup": float(logits[greedy[at]] - logits[lookup[at]])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="HF model folders, .gguf files, or 'teacher' (the embedded one)")
    parser.add_argument("--length", type=int, default=1024, help="document tokens in the prompt")
    parser.add_argument("--cue", type=int, default=32, help="tokens of the document's start repeated after it")
    parser.add_argument("--new", type=int, default=64, help="tokens generated")
    parser.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens (tokens drafted per step)")
    parser.add_argument("--docs", type=int, default=4, help="documents")
    parser.add_argument("--source", default="builtin",
                        help="hypenet.data document source: 'builtin' (installed by `python -m hypenet.data install`), "
                             "or a .txt/.jsonl(.xz)/.parquet file or folder, e.g. the corpus a conversion trained on")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="the models' dtype: auto (bf16 on a GPU, fp32 on the CPU), "
                        "float32, bfloat16 or float16")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.cue + args.new > args.length:
        raise SystemExit(f"--cue + --new must fit in --length; got {args.cue} + {args.new} > {args.length}")
    rows = {}
    for spec in args.models:
        model, tokenizer = load_model_for_eval(spec, args.device, args.dtype)
        docs = heldout_token_docs(tokenizer, args.docs, args.length, args.source, progress=False)
        timed_generate(model, copy_prompts(docs[:1], 64, 8, 4)[0][0], 4)  # warm-up
        samples = []
        for prompt, expected in copy_prompts(docs, args.length, args.cue, args.new):
            greedy, t_greedy = timed_generate(model, prompt, args.new)
            lookup, t_lookup = timed_generate(model, prompt, args.new, prompt_lookup_num_tokens=args.lookup)
            samples.append({"same_tokens": greedy == lookup, "copied": copied_prefix(greedy, expected),
                            "greedy_s": t_greedy, "lookup_s": t_lookup,
                            "parted": parting(model, prompt, greedy, lookup)})
        rows[spec] = {
            "same_tokens": sum(s["same_tokens"] for s in samples), "documents": len(samples),
            "copied_mean": float(np.mean([s["copied"] for s in samples])),
            "greedy_s": sum(s["greedy_s"] for s in samples), "lookup_s": sum(s["lookup_s"] for s in samples),
            "largest_margin_where_parted": max((s["parted"]["margin"] for s in samples if s["parted"]), default=None),
            "samples": samples,
        }
        print(f"{spec}: {rows[spec]['same_tokens']}/{len(samples)} same, speed-up "
              f"{rows[spec]['greedy_s'] / rows[spec]['lookup_s']:.2f}x", file=sys.stderr, flush=True)
    print(f"| model | same tokens as greedy | largest logit margin where they part | tokens copied before the first "
          f"miss (of {args.new}) | greedy s | prompt lookup s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for spec, row in rows.items():
        margin = row["largest_margin_where_parted"]
        print(f"| {spec} | {row['same_tokens']}/{row['documents']} | {'-' if margin is None else f'{margin:.3f}'} | "
              f"{row['copied_mean']:.1f} | {row['greedy_s']:.2f} | {row['lookup_s']:.2f} | "
              f"{row['greedy_s'] / row['lookup_s']:.2f}x |")
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k not in ("models", "out")}
        args.out.write_text(json.dumps({"settings": settings, "models": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
