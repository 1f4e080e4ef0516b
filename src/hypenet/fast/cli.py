"""`hypenet generate MODEL --prompt TEXT`: text generation through the fast engine.

MODEL is a HypeNet checkpoint, or a supported Transformer teacher (checkpoint, hub id, .gguf, 'embedded'), which is
run as the equivalent all-attention HypeNet (same outputs) so that it gets the same static cache and compiled step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidInputError, MissingInputError
from ..units import non_negative_float, positive_int

if TYPE_CHECKING:
    import torch

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # --dtype: torch's dtype of each name


def load_hypenet(spec: str, dtype: torch.dtype, device: str | torch.device):
    """(HypeNet model for the engine, tokenizer or None) for a HypeNet checkpoint or a teacher spec."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    config_file = path / "config.json"
    if config_file.is_file() and AutoConfig.from_pretrained(path, trust_remote_code=True).model_type == "hypenet":
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=dtype).to(device).eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError):
            tokenizer = None
        return model, tokenizer
    from ..teachers import build_hypenet_from_teacher, load_teacher

    teacher, tokenizer = load_teacher(spec, dtype=dtype, device=device)
    model = build_hypenet_from_teacher(teacher, ["attention"] * teacher.config.num_hidden_layers,
                                       attention_rope=True, attention_output_gate=False)
    return model.eval(), tokenizer


def register(subparsers) -> None:
    """Add the `generate` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "generate", help="generate text with the fast engine (static cache, compiled decode step)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-file", type=Path, help="file holding the prompt text")
    parser.add_argument("--tokenizer", default=None, help="tokenizer to use when MODEL has none")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="default 128")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=positive_int, default=None, help="sample from the k likeliest (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="of the sampling (default 0)")
    parser.add_argument("--max-len", type=positive_int, default=None,
                        help="cache length (default prompt + max-new-tokens)")
    parser.add_argument("--prefill-chunk", type=positive_int, default=None, help="prefill chunk in tokens")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--device", default=None, help="default cuda when available")
    parser.add_argument("--no-compile", action="store_true", help="no torch.compile (and no CUDA graph)")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from ..eval.models import resolve_device
    from .engine import DEFAULT_PREFILL_CHUNK, FastHypeNet

    if args.prompt_file is not None and not args.prompt_file.is_file():
        raise MissingInputError(f"--prompt-file {args.prompt_file} does not exist")
    device = resolve_device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")])
    model, tokenizer = load_hypenet(args.model, dtype, device)
    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if tokenizer is None:
        raise InvalidInputError(f"{args.model} has no tokenizer; pass --tokenizer NAME_OR_PATH")
    text = args.prompt if args.prompt is not None else args.prompt_file.read_text()
    input_ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
    if input_ids.shape[1] == 0:
        raise InvalidInputError("the prompt is empty (no tokens): give some text")
    needed = input_ids.shape[1] + args.max_new_tokens - 1  # the last new token is never cached
    if args.max_len is not None and args.max_len < needed:
        raise InvalidInputError(f"--max-len {args.max_len} cannot hold the prompt ({input_ids.shape[1]} tokens) and "
                                f"--max-new-tokens {args.max_new_tokens}: give at least {needed}, or leave it out")
    max_len = args.max_len or input_ids.shape[1] + args.max_new_tokens
    engine = FastHypeNet(model, max_batch=1, max_len=max_len, prefill_chunk=args.prefill_chunk or DEFAULT_PREFILL_CHUNK,
                         compile=False if args.no_compile else None, cuda_graph=False if args.no_compile else None)
    eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    generator = torch.Generator(device).manual_seed(args.seed)
    begin = time.perf_counter()
    output = engine.generate(input_ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                             generator=generator)
    seconds = time.perf_counter() - begin
    new = output.shape[1] - input_ids.shape[1]
    print(tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True))
    # (the text alone on stdout, so that `hypenet generate ... > out.txt` keeps just it)
    print(f"[{input_ids.shape[1]} prompt tokens, {new} new tokens in {seconds:.2f} s: {new / seconds:.1f} tokens/s, "
          "prefill and compilation included]", file=sys.stderr)
    return 0
