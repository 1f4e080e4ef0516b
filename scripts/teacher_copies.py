"""How well the teacher predicts the made-up values that stages 2-3's data copies (docs/DATA.md, "Repeated numbers"
and "Made-up UUIDs"): the distillation targets from which a student learns to copy them.

    python scripts/teacher_copies.py --config configs/gpu-smollm2.yaml [--set KEY=VALUE ...] [--stage stage2]
        [--rows N] [--model STUDENT --device cuda] [--out FILE.md]

It builds the stage's data as a conversion with that config does (teacher, corpus, seed; the teacher on the CPU in
fp32, no training), serves the stage's stream items in order until N of them hold a made-up value, and runs the
teacher over each of those up to the end of the value's copy. Per kind of value (a number, a UUID) it counts how
often the teacher's most likely next token is the copy's token, and the teacher's mean probability of it: at the
copy's first value token (the " " a needle's value begins with, which only the text copied before it leads to) and
at the value's later tokens. With --model it scores that model instead (a converted student, on --device), on the
same copies: does the student begin them more often than the teacher it learnt from? It writes a markdown table
(stdout, or --out)."""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from number_joins import served_with_places, stage_conversion, stage_parser, write_table  # noqa: E402 (beside this script)

LEAD_BUCKETS = ((4, 7), (8, 11), (12, 16))  # tokens of text copied before a value (packing.NUMBER_LEAD_TOKENS: 4-16)
UUID_TEXT = re.compile(r" ?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def copy_scores(rows: Iterable[tuple[np.ndarray, list, str]],
                probabilities: Callable[[np.ndarray, list[int]], torch.Tensor]) -> dict:
    """Over (row, placed, kind) triples (placed as `repeat_number` fills it; kind names the value, e.g. "number" or
    "uuid"): per kind, the values scored and, at the copy's first token and at its later ones, the tokens, those the
    teacher ranks first and the sum of its probabilities for them. `probabilities(row, positions)` gives the
    teacher's next-token distribution at each position, [len(positions), vocab]; position p predicts row[p + 1].
    The first token's counts are also kept by how many tokens of text before the value were copied with it
    ("by_lead", in the LEAD_BUCKETS)."""
    scores: dict[str, dict] = {}
    for row, placed, kind in rows:
        copy = next(((start, end) for name, start, end in placed if name == "copy"), None)
        value = next((start for name, start, _ in placed if name == "number"), None)
        if copy is None or value is None:
            continue
        start, end = copy
        lead = 0  # the tokens before the copy that equal those before the value
        while lead < value and row[start - lead - 1] == row[value - lead - 1]:
            lead += 1
        targets = torch.as_tensor(row[start:end].astype(np.int64))
        probs = probabilities(row, list(range(start - 1, end - 1)))
        top = probs.argmax(dim=-1) == targets
        chosen = probs.gather(1, targets[:, None])[:, 0]
        s = scores.setdefault(kind, {"values": 0, "first": [0, 0, 0.0], "rest": [0, 0, 0.0], "by_lead": {}})
        s["values"] += 1
        bucket = next((f"{lo}-{hi}" for lo, hi in LEAD_BUCKETS if lo <= lead <= hi), "other")
        for part, sl in (("first", slice(0, 1)), ("rest", slice(1, None)), (bucket, slice(0, 1))):
            counts = s[part] if part in ("first", "rest") else s["by_lead"].setdefault(part, [0, 0, 0.0])
            counts[0] += int(top[sl].numel())
            counts[1] += int(top[sl].sum())
            counts[2] += float(chosen[sl].sum())
    return scores


@torch.inference_mode()
def next_token_probabilities(model, row: np.ndarray, positions: list[int]) -> torch.Tensor:
    """A causal LM's next-token distributions at `positions` of `row` (increasing), [len(positions), vocab]: the row
    run up to the last of them, the output head applied at those positions alone."""
    ids = torch.as_tensor(row[:positions[-1] + 1].astype(np.int64), device=model.device)[None]
    hidden = model.base_model(input_ids=ids).last_hidden_state[0, positions]
    return model.get_output_embeddings()(hidden).float().softmax(dim=-1).cpu()


def table(scores: dict, title: str) -> str:
    def cell(tokens: int, hits: int, p: float) -> str:
        return f"{hits} of {tokens} ({100 * hits / tokens:.1f}%), p {p / tokens:.3f}" if tokens else "-"

    header = "| value | copies | first token: ranked first, mean probability | later tokens: the same |"
    lines = [f"# {title}", "", header, "|---|---|---|---|"]
    for kind, s in sorted(scores.items()):
        lines.append(f"| {kind} | {s['values']} | {cell(*s['first'])} | {cell(*s['rest'])} |")
    lines += ["", "The first token by the tokens of text copied before the value:", "",
              "| value | text copied before it | copies | first token: ranked first, mean probability |",
              "|---|---|---|---|"]
    order = [f"{lo}-{hi}" for lo, hi in LEAD_BUCKETS] + ["other"]
    for kind, s in sorted(scores.items()):
        for bucket in (b for b in order if b in s["by_lead"]):
            counts = s["by_lead"][bucket]
            lines.append(f"| {kind} | {bucket} tokens | {counts[0]} | {cell(*counts)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60, help="stream items with a made-up value to score (60)")
    parser.add_argument("--model", default=None,
                        help="score this model (e.g. a converted student's folder) instead of the teacher")
    parser.add_argument("--device", default="cpu", help="where the scored model runs: cpu (default) or cuda")
    args = parser.parse_args(argv)
    if args.rows <= 0:
        parser.error(f"--rows is a count of stream items, 1 or more; got {args.rows}")

    with stage_conversion(args) as (config, build):
        data = config.data
        if not data.repeat_spans or not (data.repeat_numbers or data.repeat_uuids):
            parser.error("the config plants no made-up values: it needs data.repeat_spans and data.repeat_numbers or "
                         "data.repeat_uuids")
        conversion = build()
        chunks = conversion.chunks(args.stage)
        tokenizer = conversion.tokenizer
        if args.model is None:
            model = conversion.teacher.float().eval().to(args.device)
        else:
            from hypenet.eval.models import load_model_for_eval

            model, _ = load_model_for_eval(args.model, device=args.device, dtype=torch.float32)
        stage = getattr(conversion.config, args.stage)
        stream_items = stage.steps() * stage.batch_size  # what the stage trains on

        def planted():
            with_value = ((row, placed) for row, placed in served_with_places(chunks, stream_items) if placed)
            for row, placed in itertools.islice(with_value, args.rows):
                _, start, end = placed[0]
                text = tokenizer.decode(row[start:end].tolist())
                yield row, placed, "uuid" if UUID_TEXT.fullmatch(text) else "number"

        rows = tqdm(planted(), total=args.rows, desc="scoring copies", unit="copy")
        scores = copy_scores(rows, lambda row, positions: next_token_probabilities(model, row, positions))
    scored = sum(s["values"] for s in scores.values())
    who = "The teacher" if args.model is None else f"{args.model}"
    title = (f"{who} on the copies of {args.stage}'s made-up values: its first {scored} stream items with one, "
             f"seed {config.seed}, repeat_spans {data.repeat_spans}, repeat_numbers {data.repeat_numbers}, "
             f"repeat_uuids {data.repeat_uuids}, number_decoys {data.number_decoys}")
    write_table(table(scores, title), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
