"""`hypenet merge-evals`: parts of one evaluation (NIAH lengths run separately) become the evaluation of them all."""

import json
import lzma

import pytest

from hypenet.errors import InvalidInputError
from hypenet.eval.__main__ import main
from hypenet.eval.merge import MergeError, merge_evaluations
from hypenet.eval.niah import summarize
from hypenet.eval.niah_forced import summarize_forced

FOOTPRINT = {"model_type": "hypenet", "parameters": 1000, "layers": 2, "attention_layers": 1}
SETTINGS = {"niah_depths": [0.0, 1.0], "niah_samples": 2, "tasks": ["single_1", "single_2"], "haystack": "builtin",
            "haystack_heldout": True, "ppl_heldout_fraction": None, "chat_template": False, "seed": 0,
            "forced_answer": " {value}"}


def niah_rows(length, pattern):
    """Records of a 2-task x 2-depth x 2-sample grid at one length; pattern[i] says whether answer i is right."""
    cells = [(task, depth) for task in SETTINGS["tasks"] for depth in SETTINGS["niah_depths"] for _ in range(2)]
    return [{"task": task, "context_len": length, "depth": depth, "correct": right}
            for (task, depth), right in zip(cells, pattern)]


def forced_rows(length, starts):
    return [{"task": "single_1", "context_len": length, "depth": 0.0, "choice": " " if s else ":", "start": s,
             "first_rank": 0 if s else 3, "rest": 1.0, "exact": s} for s in starts]


def write_part(folder, records, evals, **whole):
    """An evaluation folder as `hypenet eval` writes it: results.json and the per-sample files."""
    folder.mkdir(parents=True)
    results = {"model": "runs/x/model", "label": "x", "evals": evals, "timing_s": {"total": 10.0},
               "settings": dict(SETTINGS), "footprint": dict(FOOTPRINT), **whole}
    for name, rows in records.items():
        (folder / f"{name}_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        results[name] = summarize_forced(rows) if name == "niah_forced" else summarize(rows)
        if name == "niah_forced":
            results[name]["answer"] = " {value}"
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def parts(tmp_path):
    short = {"niah": niah_rows(4096, [1, 1, 1, 0, 1, 0, 0, 0]), "niah_forced": forced_rows(4096, [1, 1, 0])}
    long = {"niah": niah_rows(16384, [1, 0, 0, 0, 0, 0, 0, 0]) + niah_rows(32768, [0] * 8),
            "niah_forced": forced_rows(16384, [0, 0, 1, 1])}
    ppl = {"max_len": 64, "docs": 2, "buckets": [], "nll": 2.0, "ppl": 7.39}
    return (write_part(tmp_path / "short", short, ["niah_forced", "niah"]),
            write_part(tmp_path / "long", long, ["niah_forced", "niah"]),
            write_part(tmp_path / "ppl", {}, ["ppl"], perplexity=ppl), short, long, ppl)


def test_merged_summaries_are_those_of_all_the_samples(parts):
    short_dir, long_dir, ppl_dir, short, long, ppl = parts
    merged, records = merge_evaluations([long_dir, short_dir, ppl_dir / "results.json"], label="student")
    assert merged["niah"] == summarize(short["niah"] + long["niah"])
    assert merged["niah"]["by_length"] == {"4096": 0.5, "16384": 0.125, "32768": 0.0}
    assert merged["niah"]["num_samples"] == 24
    forced = summarize_forced(long["niah_forced"] + short["niah_forced"])
    assert merged["niah_forced"] == {"answer": " {value}", **forced}
    assert merged["niah_forced"]["tasks"]["single_1"]["start"] == 4 / 7
    assert merged["perplexity"] == ppl
    assert merged["evals"] == ["ppl", "niah", "niah_forced"]  # hypenet eval's order
    assert merged["settings"]["niah_lengths"] == [4096, 16384, 32768]
    assert merged["label"] == "student" and merged["timing_s"]["total"] == 30.0
    assert len(records["niah"]) == 24 and len(records["niah_forced"]) == 7


@pytest.mark.parametrize("change, message", [
    ({"niah_samples": 4}, r"other NIAH settings \(niah_samples: 2 vs 4\)"),
    ({"haystack": "corpus.jsonl"}, "other NIAH settings"),
    ({"forced_answer": ": {value}"}, r"niah_forced of .* other NIAH settings \(forced_answer"),
])
def test_parts_of_different_grids_do_not_merge(parts, change, message):
    short_dir, long_dir = parts[0], parts[1]
    results = json.loads((long_dir / "results.json").read_text())
    results["settings"].update(change)
    (long_dir / "results.json").write_text(json.dumps(results))
    with pytest.raises(MergeError, match=message):
        merge_evaluations([short_dir, long_dir])


def test_what_cannot_be_one_evaluation_is_refused(parts, tmp_path):
    short_dir, long_dir, ppl_dir = parts[:3]
    with pytest.raises(MergeError, match="niah at 4096 tokens is in both"):
        merge_evaluations([short_dir, long_dir, short_dir])
    with pytest.raises(MergeError, match="perplexity is in both"):
        merge_evaluations([ppl_dir, long_dir, ppl_dir])
    with pytest.raises(MergeError, match="at least two"):
        merge_evaluations([short_dir])
    with pytest.raises(MergeError, match="no results.json there"):
        merge_evaluations([short_dir, tmp_path / "missing"])
    other = write_part(tmp_path / "other", {"niah": niah_rows(65536, [0] * 8)}, ["niah"])
    results = json.loads((other / "results.json").read_text())
    results["footprint"]["parameters"] = 2000
    (other / "results.json").write_text(json.dumps(results))
    with pytest.raises(MergeError, match="different models"):
        merge_evaluations([short_dir, other])
    (long_dir / "niah_samples.jsonl").unlink()
    with pytest.raises(MergeError, match=r"no niah_samples.jsonl \(or niah_samples.jsonl.xz\) beside it"):
        merge_evaluations([short_dir, long_dir])


def test_parts_whose_samples_are_packed_merge_as_the_plain_ones(parts):
    short_dir, long_dir = parts[:2]
    plain, plain_records = merge_evaluations([short_dir, long_dir], label="student")
    for path in [*long_dir.glob("*_samples.jsonl")]:  # as results/ keeps them: xz -9, the plain file gone
        path.with_name(path.name + ".xz").write_bytes(lzma.compress(path.read_bytes()))
        path.unlink()
    packed, packed_records = merge_evaluations([short_dir, long_dir], label="student")
    assert (packed, packed_records) == (plain, plain_records)
    assert len(packed_records["niah"]) == 24


def test_the_command_writes_a_new_folder_and_refuses_a_part_as_out(parts, tmp_path):
    short_dir, long_dir, ppl_dir = parts[:3]
    out = tmp_path / "merged"
    assert main(["merge-evals", str(short_dir), str(long_dir), str(ppl_dir), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["merged_from"] == [str(p / "results.json") for p in (short_dir, long_dir, ppl_dir)]
    assert len((out / "niah_samples.jsonl").read_text().splitlines()) == 24
    for name in ("niah_single_1.png", "niah_accuracy_vs_length.png", "report.md", "niah_forced_samples.jsonl"):
        assert (out / name).is_file(), name
    assert "| 16K | 25.0 |" in (out / "report.md").read_text()  # single_1 at 16K: 1 of 2 at depth 0, 0 of 2 at 1
    with pytest.raises(InvalidInputError, match="is one of the parts"):
        main(["merge-evals", str(short_dir), str(long_dir), "--out", str(long_dir)])
    with pytest.raises(InvalidInputError, match="merge-evals: niah at 4096 tokens is in both"):
        main(["merge-evals", str(short_dir), str(short_dir), "--out", str(tmp_path / "again")])


def test_parts_at_other_logit_scaling_bases_are_refused_and_older_parts_without_one_merge(tmp_path):
    """`hypenet eval --logit-scaling-base` changes the model's answers: its parts are not one evaluation. A part made
    before the footprint named the base merges with one that names it."""
    parts = {}
    for name, length, base in (("a", 4096, 8000.0), ("b", 8192, 16000.0), ("older", 8192, None)):
        folder = write_part(tmp_path / name, {"niah": niah_rows(length, [1] * 8)}, ["niah"])
        results = json.loads((folder / "results.json").read_text())
        if base is not None:
            results["footprint"]["logit_scaling_base"] = base
        (folder / "results.json").write_text(json.dumps(results))
        parts[name] = folder
    with pytest.raises(MergeError, match="another logit-scaling base"):
        merge_evaluations([parts["a"], parts["b"]])
    merged, _ = merge_evaluations([parts["a"], parts["older"]])
    assert set(merged["niah"]["tasks"]["single_1"]["by_length"]) == {"4096", "8192"}
