"""HALO's GPU path in about a minute, before a real conversion spends the lease: a tiny random Qwen3 teacher and a
generated corpus go through `hypenet convert --preset smoke` on CUDA (bf16 mixed precision, fla kernels forward and
backward), and the exported checkpoint must load through AutoModelForCausalLM and generate.

    PYTHONPATH=src python3 scripts/gpu_smoke.py [--device cuda] [--out DIR]

Under DeepSpeed ZeRO-3 on one GPU (needs deepspeed):
    accelerate launch --config_file configs/accelerate-zero3.yaml --num_processes 1 scripts/gpu_smoke.py

It reuses the CPU tests' tiny teacher and documents (tests/test_halo_pipeline.py), so the two check the same thing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="conversion folder (default: a temporary one)")
    args = parser.parse_args()

    import torch
    from test_halo_pipeline import TINY, make_documents, make_teacher, make_tokenizer, write_jsonl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypenet.cli import main as hypenet
    from hypenet.halo.pipeline import unsharded_loading

    root = Path(tempfile.mkdtemp(prefix="hypenet-gpu-smoke-"))
    out = args.out or root / "out"
    documents = make_documents(300)
    data = write_jsonl(root / "data.jsonl", documents)
    teacher = make_teacher(root / "teacher", "qwen3", make_tokenizer(documents))
    started = time.perf_counter()
    command = ["convert", "--preset", "smoke", "--device", args.device, "--teacher", str(teacher), "--data", str(data),
               "--out", str(out), "--overwrite"] + [a for override in TINY for a in ("--set", override)]
    if hypenet(command) != 0:
        print("gpu smoke: conversion FAILED", flush=True)
        return 1
    report = json.loads((out / "report.json").read_text())
    with unsharded_loading():  # under `accelerate launch` with DeepSpeed ZeRO-3, the whole model, not shards
        model = AutoModelForCausalLM.from_pretrained(out / "model", trust_remote_code=True,
                                                     dtype=torch.bfloat16).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    ids = tokenizer("The cat sees a red bird.", return_tensors="pt").input_ids.to(args.device)
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    for name, stage in report["stages"].items():
        print(f"gpu smoke: {name} loss {stage['initial_loss']:.4g} -> {stage['final_loss']:.4g} "
              f"({stage['steps']} steps, {stage['wall_time_s']}s)")
    print(f"gpu smoke: attention layers {report['selection']['attention_layers']}; generated "
          f"{generated.shape[1] - ids.shape[1]} tokens; {time.perf_counter() - started:.0f}s in all; ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
