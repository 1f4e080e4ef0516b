"""Where a teacher's attention finds the needles of HALO's built-in recall probe, per layer (the column that the
conversion report now shows), with the probe's haystack of RULER's filler and of held-out documents.

    python scripts/halo_probe_attention.py --out results/needle_attention/halo_probe/results.json
    python scripts/halo_probe_attention.py --recall-style question \
        --out results/needle_attention/halo_probe/question.json

Compare with `hypenet eval --evals needle_attention` on RULER-style NIAH prompts (results/needle_attention/): the
probe repeats the needle's own words as its question ("The special magic number for apple is"), NIAH asks in other
words ("What is the special magic number for ... mentioned in the provided text?").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from hypenet.eval.documents import DEFAULT_HELDOUT_FRACTION, heldout_token_docs
    from hypenet.eval.models import load_model_for_eval
    from hypenet.halo.probes import build_probes
    from hypenet.halo.select import needle_attention

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="teacher", help="what `hypenet eval` takes (default: the embedded teacher)")
    parser.add_argument("--source", default="builtin", help="document source of the held-out haystacks")
    parser.add_argument("--samples", type=int, default=8, help="recall probe rows (default 8)")
    parser.add_argument("--context", type=int, default=2048, help="probe length in tokens (HALO's GPU default 2048)")
    parser.add_argument("--recall-style", default="repeat", choices=["repeat", "question"],
                        help="how the probe asks for a value (select.recall_style; default repeat)")
    parser.add_argument("--top", type=int, default=7, help="how many layers to list (default 7)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    model, tokenizer = load_model_for_eval(args.model, args.device, "auto")
    docs = heldout_token_docs(tokenizer, args.samples, 2 * args.context, args.source, DEFAULT_HELDOUT_FRACTION, 0,
                              progress=False)
    results = {"settings": {k: str(v) for k, v in vars(args).items()}}
    for name, haystack in (("filler", None), ("heldout", list(docs))):
        probes = build_probes(tokenizer, haystack, recall_samples=args.samples, context=args.context,
                              commonsense_tokens=args.context, seed=0, recall_style=args.recall_style)
        looks = needle_attention(model, probes)
        order = sorted(looks, key=lambda i: -looks[i])
        results[name] = {"needle_attention": looks, "top": sorted(order[:args.top])}
        print(f"{name}: most in layers {results[name]['top']}: "
              + ", ".join(f"{i}: {100 * looks[i]:.1f}%" for i in order[:args.top]), flush=True)
    results["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
