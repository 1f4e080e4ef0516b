"""What HALO's attention changes cost the embedded teacher before training, and whether a stage-1-style alignment
of the kept attention layers recovers it (CPU, a few minutes; results/nope_alignment_cpu/).

    python scripts/nope_alignment_cpu.py --steps 120 --out results/nope_alignment_cpu

1. Held-out NLL (16 held-out chunks of 512 tokens, built-in corpus) of the teacher with only the attention layers
   HALO kept in the GPU conversion (7, 14, 16, 17, 18, 28, 29) changed, every other layer the teacher's own:
   RoPE removed, the new output gate added, both (HALO's stage-2 starting point for those layers).
2. Those 7 attention layers (both changes) fit to the teacher attention's outputs by MSE on the teacher's inputs,
   as stage 1 fits its lightning layers (`stage1.align_attention`), then the NLL again.
3. With --niah-length N: NIAH-Single-1/2 at N tokens for every variant (5 depths x --niah-samples), i.e. whether
   the kept layers without RoPE can still retrieve, with every other layer the teacher's own.
4. With --sweep (instead of 1-2): RoPE removed from one kept layer at a time, and from 7 evenly spaced layers as a
   control (the ablation's even selection), NLL and NIAH for each: which layers' positions retrieval needs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hypenet.data import PackedChunks, tokenize_corpus
from hypenet.eval.documents import load_documents
from hypenet.eval.models import prepare_tokenizer
from hypenet.eval.niah import evaluate_niah
from hypenet.halo.config import Stage1Config
from hypenet.halo.engine import lr_lambda
from hypenet.halo.stage1 import teacher_attention_io
from hypenet.model import build_mixer_context
from hypenet.model.modeling_hypenet import HypeNetRotaryEmbedding
from hypenet.teachers import (
    attention_from_teacher,
    build_hypenet_from_teacher,
    hypenet_config_from_teacher,
    load_teacher,
)

KEPT = [7, 14, 16, 17, 18, 28, 29]
NIAH_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
EVEN = [2, 6, 10, 15, 19, 23, 27]  # the ablation's evenly spaced attention layers


def heldout_nll(model, chunks: torch.Tensor) -> float:
    with torch.no_grad():
        total = 0.0
        for rows in chunks.split(4):
            logits = model(rows[:, :-1]).logits.float()
            total += F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
    return total / (chunks.shape[0] * (chunks.shape[1] - 1))


def teacher_with(teacher, layers: dict[int, torch.nn.Module]):
    """The teacher as an all-attention HypeNet (RoPE, no gate: the same function), with `layers`' mixers swapped in."""
    model = build_hypenet_from_teacher(teacher, ["attention"] * teacher.config.num_hidden_layers, attention_rope=True,
                                       attention_output_gate=False, attention_logit_scaling_base=None)
    for i, mixer in layers.items():
        model.model.layers[i].self_attn = mixer
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120, help="alignment steps (default 120)")
    parser.add_argument("--align-layers", type=lambda text: [int(i) for i in text.split(",")], default=KEPT,
                        help=f"layers whose NoPE + gate attention is aligned (default the kept ones, {KEPT})")
    parser.add_argument("--align-seq-len", type=int, default=256, help="alignment sequence length (default 256)")
    parser.add_argument("--align-batch", type=int, default=8, help="alignment sequences per step (default 8)")
    parser.add_argument("--align-only", action="store_true", help="skip the unaligned variants of step 1")
    parser.add_argument("--out", type=Path, default=Path("results/nope_alignment_cpu"))
    parser.add_argument("--niah-length", type=int, default=0,
                        help="also NIAH-Single-1/2 at this many tokens for every variant (default 0: none)")
    parser.add_argument("--niah-samples", type=int, default=2, help="samples per task and depth (default 2)")
    parser.add_argument("--sweep", action="store_true",
                        help="RoPE removed from one kept layer at a time and from the even layers, instead of 1-2")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher, tokenizer = load_teacher(None)
    corpus = tokenize_corpus("builtin", tokenizer, progress=False)
    long_docs = [d for d in corpus.heldout_docs if len(d) >= 513][:16]
    chunks = torch.stack([torch.as_tensor(d[:513].astype("int64")) for d in long_docs])
    command = f"python scripts/nope_alignment_cpu.py --steps {args.steps} --out {args.out}"
    if (args.align_layers, args.align_seq_len, args.align_batch) != (KEPT, 256, 8) or args.align_only:
        command += (f" --align-layers {','.join(map(str, args.align_layers))} --align-seq-len {args.align_seq_len}"
                    f" --align-batch {args.align_batch}" + " --align-only" * args.align_only)
    if args.niah_length:
        command += f" --niah-length {args.niah_length} --niah-samples {args.niah_samples}"
    if args.sweep:
        command += " --sweep"
    results = {"command": command, "kept_attention_layers": KEPT, "heldout_chunks": list(chunks.shape), "nll": {}}
    haystack = load_documents("builtin") if args.niah_length else None
    prepare_tokenizer(tokenizer)
    began = time.time()

    def record(name: str, model) -> None:
        results["nll"][name] = nll = heldout_nll(model, chunks)
        print(f"{name}: NLL {nll:.4f}, ppl {math.exp(nll):.2f} [{time.time() - began:.0f} s]", flush=True)
        if args.niah_length:
            records = evaluate_niah(model, tokenizer, ["single_1", "single_2"], [args.niah_length], NIAH_DEPTHS,
                                    args.niah_samples, haystack_docs=haystack, batch_size=4, progress=False)
            results.setdefault("niah", {})[name] = {
                "accuracy": sum(r["correct"] for r in records) / len(records),
                "outputs": [{k: r[k] for k in ("task", "depth", "value", "output", "correct")} for r in records]}
            print(f"{name}: NIAH-Single-1/2 at {args.niah_length} tokens "
                  f"{results['niah'][name]['accuracy']:.0%} [{time.time() - began:.0f} s]", flush=True)

    record("teacher", teacher)
    if args.sweep:
        config = hypenet_config_from_teacher(teacher.config, attention_rope=False, attention_output_gate=False)
        for layers in [[i] for i in KEPT] + [EVEN]:
            record(f"no RoPE in {layers}", teacher_with(teacher, {i: attention_from_teacher(teacher, i, config)
                                                                  for i in layers}))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        return
    variants = [("no RoPE", False, False), ("output gate", True, True), ("no RoPE + output gate", False, True)]
    for name, rope, gate in [] if args.align_only else variants:
        config = hypenet_config_from_teacher(teacher.config, attention_rope=rope, attention_output_gate=gate)
        torch.manual_seed(0)  # the gates' initialisation
        record(name, teacher_with(teacher, {i: attention_from_teacher(teacher, i, config) for i in KEPT}))

    # alignment: HypeNet's attention (no RoPE, gate) of the kept layers fit to the teacher's, stage 1's recipe
    config = hypenet_config_from_teacher(teacher.config)
    torch.manual_seed(0)
    aligned_layers = args.align_layers
    students = torch.nn.ModuleDict({str(i): attention_from_teacher(teacher, i, config) for i in aligned_layers})
    train = Stage1Config(tokens=args.steps * args.align_batch * args.align_seq_len, seq_len=args.align_seq_len,
                         batch_size=args.align_batch, warmup_steps=2)
    optimizer = torch.optim.AdamW(students.parameters(), lr=train.lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train, args.steps))
    rotary = HypeNetRotaryEmbedding(config)
    mse = []
    batches = PackedChunks(corpus.train_tokens, train.seq_len, seed=0).batches(train.batch_size, num_steps=args.steps)
    for ids in batches:
        inputs, targets = teacher_attention_io(teacher, ids)
        ctx = build_mixer_context(config, rotary, inputs[0])
        loss = sum(F.mse_loss(students[str(i)](inputs[i], ctx), targets[i]) for i in aligned_layers)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(students.parameters(), train.grad_clip)
        optimizer.step()
        schedule.step()
        mse.append(loss.item())
        if len(mse) % 10 == 0:
            print(f"step {len(mse)}: summed MSE {loss.item():.3f} [{time.time() - began:.0f} s]", flush=True)
    results["alignment"] = {"layers": aligned_layers, "steps": args.steps, "seq_len": train.seq_len,
                            "tokens": train.tokens, "lr": train.lr, "summed_mse": mse}
    aligned = {int(i): mixer for i, mixer in students.items()}
    where = "" if aligned_layers == KEPT else f" in {aligned_layers}"
    record(f"no RoPE + output gate{where}, aligned {train.tokens} tokens", teacher_with(teacher, aligned))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
