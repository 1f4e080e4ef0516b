"""Does the export's copy probe see copying? The far-copy loss (halo/export.py, `export.copy_probe`) beside the plain
loss over the same positions, for any causal LMs on the same held-out documents: a model that follows a copy from
far back has a far-copy loss well below its plain loss; one that does not, about the same.

    python scripts/copy_probe_check.py teacher runs/smollm2-hypenet/model [--length 4096 --scored-from 1024]

Documents: the `--docs` longest held-out documents of the built-in corpus (HALO's split, 1%) of at least --length
tokens, cut to it; in each, --copies spans of --span tokens copied from at least --scored-from tokens back. Models are
evaluated as saved (a HypeNet at its exported logit-scaling base). Prints a markdown table and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hypenet.data.packing import tokenize_corpus  # noqa: E402
from hypenet.eval.models import load_model_for_eval  # noqa: E402
from hypenet.halo.export import far_copy_docs, far_copy_loss, long_context_loss  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="HF model folders, .gguf files, or 'teacher' (the embedded one)")
    parser.add_argument("--length", type=int, default=4096, help="tokens per document")
    parser.add_argument("--scored-from", type=int, default=1024, help="first position scored (as the training context)")
    parser.add_argument("--copies", type=int, default=16, help="copied spans per document")
    parser.add_argument("--span", type=int, default=32, help="tokens per copied span")
    parser.add_argument("--docs", type=int, default=4, help="documents")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if not 0 < args.scored_from < args.length:
        raise SystemExit(f"--scored-from must lie in (0, --length); got {args.scored_from} and {args.length}")
    rows = {}
    for spec in args.models:
        model, tokenizer = load_model_for_eval(spec, "cpu")
        corpus = tokenize_corpus("builtin", tokenizer, heldout_fraction=0.01, max_tokens=11_000_000)
        longest = sorted(corpus.long_heldout_docs(args.length), key=len, reverse=True)[:args.docs]
        if not longest:
            raise SystemExit(f"no held-out document of {args.length} tokens for {spec}: give a smaller --length")
        docs = [np.asarray(doc[:args.length], dtype=np.int64) for doc in longest]
        probes = far_copy_docs(docs, args.scored_from, args.copies, args.span)
        with torch.no_grad():
            plain, copied = long_context_loss(model, docs, args.scored_from), far_copy_loss(model, probes, args.span)
        rows[spec] = {"loss": plain, "far_copy_loss": copied, "documents": len(docs),
                      "logit_scaling_base": getattr(model.config, "attention_logit_scaling_base", None)}
        print(f"{spec}: loss {plain:.4f}, far-copy loss {copied:.4f}", file=sys.stderr, flush=True)
    print(f"| model | loss, positions {args.scored_from}-{args.length} | far-copy loss | far-copy / loss |")
    print("|---|---|---|---|")
    for spec, row in rows.items():
        print(f"| {spec} | {row['loss']:.4f} | {row['far_copy_loss']:.4f} | {row['far_copy_loss'] / row['loss']:.2f} |")
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k not in ("models", "out")}
        args.out.write_text(json.dumps({"settings": settings, "models": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
