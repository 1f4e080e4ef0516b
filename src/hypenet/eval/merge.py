"""One evaluation from several parts of it: `hypenet merge-evals PART PART ... --out DIR`.

A long NIAH grid is often run in pieces (one set of lengths per job or per GPU lease, the cheap evaluations in
another). Merging checks that the parts are of the same model with the same NIAH grid settings and do not repeat a
length, then recomputes every NIAH summary from the parts' per-sample files, so that the merged results.json is
what one `hypenet eval` over all of the lengths would have written.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypenet import files

# the settings that decide which NIAH prompts are built and how they are scored: they must agree across the parts
GRID_SETTINGS = ("niah_depths", "niah_samples", "tasks", "haystack", "haystack_heldout", "ppl_heldout_fraction",
                 "chat_template", "seed")
# per-sample evaluations: results key -> the samples file beside results.json
SAMPLED = {"niah": "niah_samples.jsonl", "niah_yarn": "niah_yarn_samples.jsonl",
           "niah_forced": "niah_forced_samples.jsonl"}
# evaluations taken whole from the one part that ran them
WHOLE = ("perplexity", "copy", "lm_eval", "needle_attention")


class MergeError(ValueError):
    """The parts cannot be one evaluation; the message says which part and what differs."""


def _results_path(part: str | Path) -> Path:
    path = Path(part)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise MergeError(f"{part}: no results.json there; give the folders `hypenet eval --out` wrote (or their "
                         "results.json files).")
    return path


def load_part(part: str | Path) -> tuple[Path, dict, dict[str, list[dict]]]:
    """(results.json path, its results, {NIAH evaluation: per-sample records}) of one evaluation folder."""
    path = _results_path(part)
    results = json.loads(path.read_text())
    records = {}
    for name, file in SAMPLED.items():
        if name not in results:
            continue
        samples = path.parent / file
        if files.find(samples) is None:
            raise MergeError(f"{path} has {name} results but no {file} (or {file}.xz) beside it: merging recomputes "
                             "the summaries from the samples, so copy the whole evaluation folder.")
        records[name] = [json.loads(line) for line in files.read_text(samples).splitlines() if line.strip()]
    return path, results, records


def _lengths(records: list[dict]) -> set[int]:
    return {int(r["context_len"]) for r in records}


def merge_evaluations(parts: list[str | Path], label: str | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """The merged results, every NIAH summary recomputed from the parts' samples, and the merged per-sample records
    of each NIAH evaluation. Raises MergeError when the parts do not fit together."""
    from .niah import summarize
    from .niah_forced import summarize_forced

    if len(parts) < 2:
        raise MergeError(f"merging needs at least two evaluations, got {len(parts)}.")
    loaded = [load_part(part) for part in parts]
    first_path, first, _ = loaded[0]
    merged_records: dict[str, list[dict]] = {}
    owner: dict[tuple[str, int], Path] = {}  # (NIAH evaluation, length) -> the part that measured it
    grid: dict[str, tuple[Path, dict]] = {}  # NIAH evaluation -> the first part that ran it, and its settings
    whole: dict[str, tuple[Path, object]] = {}  # other evaluation -> the part that ran it, and its results
    for path, results, records in loaded:
        mine, theirs = results.get("footprint") or {}, first.get("footprint") or {}
        differ = sorted(k for k in mine.keys() & theirs.keys() if mine[k] != theirs[k])  # (keys older parts lack)
        if differ or bool(mine) != bool(theirs):
            raise MergeError(f"{path} and {first_path} are evaluations of different models, or of one model with "
                             f"another logit-scaling base (their footprints differ: {results.get('footprint')} vs "
                             f"{first.get('footprint')}).")
        for name, rows in records.items():
            settings = list(GRID_SETTINGS) + (["forced_answer"] if name == "niah_forced" else [])
            earlier_path, earlier = grid.setdefault(name, (path, results["settings"]))
            different = [k for k in settings if results["settings"].get(k) != earlier.get(k)]
            if different:
                shown = ", ".join(f"{k}: {earlier.get(k)!r} vs {results['settings'].get(k)!r}" for k in different)
                raise MergeError(f"{name} of {earlier_path} and {path} were run with other NIAH settings "
                                 f"({shown}); only parts of one grid, differing in --niah-lengths, merge.")
            for length in sorted(_lengths(rows)):
                if (name, length) in owner:
                    raise MergeError(f"{name} at {length} tokens is in both {owner[name, length]} and {path}; each "
                                     "length may come from one part only.")
                owner[name, length] = path
            merged_records.setdefault(name, []).extend(rows)
        for key in WHOLE:
            if key in results:
                if key in whole:
                    raise MergeError(f"{key} is in both {whole[key][0]} and {path}; each evaluation other than "
                                     "NIAH may come from one part only.")
                whole[key] = (path, results[key])

    merged = {"model": first["model"], "label": label or first["label"],
              "evals": _eval_order(loaded),
              "timing_s": {"total": sum(r.get("timing_s", {}).get("total", 0.0) for _, r, _ in loaded)},
              "settings": dict(first["settings"]), "footprint": first["footprint"],
              "merged_from": [str(path) for path, _, _ in loaded]}
    niah_lengths = sorted({length for (_, length) in owner})
    merged["settings"]["niah_lengths"] = niah_lengths or first["settings"].get("niah_lengths")
    for key, (_, value) in whole.items():
        merged[key] = value
    yarn = [r["yarn"] for _, r, _ in loaded if "yarn" in r]
    if yarn:
        trained = {y["trained_context_length"] for y in yarn}
        if len(trained) > 1:
            raise MergeError(f"the parts' YaRN runs assume different trained windows {sorted(trained)}.")
        merged["yarn"] = {"trained_context_length": trained.pop(),
                          "factors": {k: v for y in yarn for k, v in y["factors"].items()}}
    for name, rows in merged_records.items():
        if name == "niah_forced":
            answer = next(r["niah_forced"]["answer"] for _, r, _ in loaded if "niah_forced" in r)
            merged[name] = {"answer": answer, **summarize_forced(rows)}
        else:
            merged[name] = summarize(rows)
    return merged, merged_records


def _eval_order(loaded) -> list[str]:
    """Every evaluation name the parts list, in the order `hypenet eval` runs them."""
    from .cli import EVALS

    names = [e for _, r, _ in loaded for e in r["evals"]]
    return [e for e in EVALS if e in names] + [e for e in dict.fromkeys(names) if e not in EVALS]
