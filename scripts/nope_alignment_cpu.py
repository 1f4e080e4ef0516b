"""What HALO's attention changes cost the embedded teacher before training, and whether a stage-1-style alignment
of the kept attention layers recovers it (CPU, a few minutes; results/nope_alignment_cpu/).

    python scripts/nope_alignment_cpu.py --steps 120 --out results/nope_alignment_cpu

1. Held-out NLL (16 held-out chunks of 512 tokens, built-in corpus) of the teacher with only the attention layers
   HALO kept in the GPU conversion (7, 14, 16, 17, 18, 28, 29) changed, every other layer the teacher's own:
   RoPE removed, the new output gate added, both (HALO's stage-2 starting point for those layers).
2. Those 7 attention layers (both changes) fit to the teacher attention's outputs by MSE on the teacher's inputs,
   as stage 1 fits its lightning layers (`stage1.align_attention`), then the NLL again.
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
    parser.add_argument("--steps", type=int, default=120, help="alignment steps of 8 x 256 tokens (default 120)")
    parser.add_argument("--out", type=Path, default=Path("results/nope_alignment_cpu"))
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher, tokenizer = load_teacher(None)
    corpus = tokenize_corpus("builtin", tokenizer, progress=False)
    long_docs = [d for d in corpus.heldout_docs if len(d) >= 513][:16]
    chunks = torch.stack([torch.as_tensor(d[:513].astype("int64")) for d in long_docs])
    results = {"command": f"python scripts/nope_alignment_cpu.py --steps {args.steps} --out {args.out}",
               "kept_attention_layers": KEPT, "heldout_chunks": list(chunks.shape), "nll": {}}
    began = time.time()

    def record(name: str, model) -> None:
        results["nll"][name] = nll = heldout_nll(model, chunks)
        print(f"{name}: NLL {nll:.4f}, ppl {math.exp(nll):.2f} [{time.time() - began:.0f} s]", flush=True)

    record("teacher", teacher)
    variants = [("no RoPE", False, False), ("output gate", True, True), ("no RoPE + output gate", False, True)]
    for name, rope, gate in variants:
        config = hypenet_config_from_teacher(teacher.config, attention_rope=rope, attention_output_gate=gate)
        torch.manual_seed(0)  # the gates' initialisation
        record(name, teacher_with(teacher, {i: attention_from_teacher(teacher, i, config) for i in KEPT}))

    # alignment: HypeNet's attention (no RoPE, gate) of the kept layers fit to the teacher's, stage 1's recipe
    config = hypenet_config_from_teacher(teacher.config)
    torch.manual_seed(0)
    students = torch.nn.ModuleDict({str(i): attention_from_teacher(teacher, i, config) for i in KEPT})
    train = Stage1Config(tokens=args.steps * 8 * 256, seq_len=256, batch_size=8, warmup_steps=2)
    optimizer = torch.optim.AdamW(students.parameters(), lr=train.lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train, args.steps))
    rotary = HypeNetRotaryEmbedding(config)
    mse = []
    batches = PackedChunks(corpus.train_tokens, train.seq_len, seed=0).batches(train.batch_size, num_steps=args.steps)
    for ids in batches:
        inputs, targets = teacher_attention_io(teacher, ids)
        ctx = build_mixer_context(config, rotary, inputs[0])
        loss = sum(F.mse_loss(students[str(i)](inputs[i], ctx), targets[i]) for i in KEPT)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(students.parameters(), train.grad_clip)
        optimizer.step()
        schedule.step()
        mse.append(loss.item())
        if len(mse) % 10 == 0:
            print(f"step {len(mse)}: summed MSE {loss.item():.3f} [{time.time() - began:.0f} s]", flush=True)
    results["alignment"] = {"steps": args.steps, "tokens": train.tokens, "lr": train.lr, "summed_mse": mse}
    aligned = {int(i): mixer for i, mixer in students.items()}
    record(f"no RoPE + output gate, aligned {train.tokens} tokens", teacher_with(teacher, aligned))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
