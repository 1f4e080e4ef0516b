"""`python -m hypenet.eval` end to end on a tiny saved model: NIAH as-is and with YaRN, then `compare`."""

import argparse
import json
import re
import shutil

import pytest
import torch
from test_eval_tiny import HAYSTACK_DOCS, tiny_hypenet, tiny_llama, tiny_tokenizer

from hypenet.errors import InvalidInputError
from hypenet.eval.__main__ import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer, max_position_embeddings=256).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# a local document source of 24 texts of different lengths (each haystack document repeated 1-8 times)
SOURCE_TEXTS = [" ".join([doc] * k) for k in range(1, 9) for doc in HAYSTACK_DOCS]


def write_source(folder):
    source = folder / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in SOURCE_TEXTS))
    return source


def test_eval_niah_with_yarn_writes_results_report_and_figures(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main([str(model_dir), "--evals", "niah", "--tasks", "single_1", "--niah-lengths", "240,400",
                 "--niah-depths", "0,1", "--niah-samples", "1", "--yarn", "--batch-size", "2", "--device", "cpu",
                 "--out", str(out), "--label", "tiny", "--no-progress"]) == 0
    assert ("NIAH lengths 400 are past tiny's context window (256 tokens, its max_position_embeddings): it is "
            "evaluated there as it is, as the paper tests its teachers\n") in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert set(results["niah"]["tasks"]["single_1"]["by_length"]) == {"240", "400"}
    assert set(results["niah_yarn"]["tasks"]["single_1"]["by_length"]) == {"400"}  # beyond the 256-token window
    assert results["yarn"] == {"trained_context_length": 256, "factors": {"400": 400 / 256}}
    assert results["footprint"]["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 8 * 2
    samples = [json.loads(line) for line in (out / "niah_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all("output" in s and "correct" in s for s in samples)
    for name in ("niah_single_1.png", "niah_yarn_single_1.png", "niah_accuracy_vs_length.png", "report.md"):
        assert (out / name).is_file(), name
    assert "| length | tiny | tiny + YaRN |" in (out / "report.md").read_text()
    # what it ran on, beside its timings: the device and the software's versions, one line of it in the report
    assert results["machine"]["device"] == "cpu" and results["machine"]["torch"] == torch.__version__
    cell = f"CPU ({results['machine']['cpu']}), torch {torch.__version__}"
    assert f"| evaluated on | {cell} |" in (out / "report.md").read_text()

    compare_out = tmp_path / "compare"
    assert main(["compare", str(out), str(out / "results.json"), "--out", str(compare_out)]) == 0
    report = (compare_out / "report.md").read_text()
    assert f"| evaluated on | {cell} | {cell} |" in report
    assert "| length | teacher | teacher + YaRN | student | student + YaRN |" in report
    assert (compare_out / "niah_accuracy_vs_length.png").is_file()

    ablation_out = tmp_path / "ablation"  # three or more models: a teacher and several students
    assert main(["compare", str(out), str(out), str(out / "results.json"), "--labels", "t,halo,even",
                 "--out", str(ablation_out)]) == 0
    report = (ablation_out / "report.md").read_text()
    assert report.startswith("# t vs halo vs even")
    assert "| length | t | t + YaRN | halo | halo + YaRN | even | even + YaRN |" in report
    with pytest.raises(InvalidInputError, match="needs 3 different names"):
        main(["compare", str(out), str(out), str(out), "--labels", "a,b", "--out", str(ablation_out)])


def test_eval_perplexity_and_document_haystack_from_a_local_source(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # hypenet.data caches tokenised corpora under ~/.cache
    source = write_source(tmp_path)
    out = tmp_path / "eval"
    assert main([str(model_dir), "--tasks", "single_2", "--haystack", str(source), "--niah-lengths", "300",
                 "--niah-depths", "0.5", "--niah-samples", "2", "--ppl-source", str(source), "--ppl-docs", "3",
                 "--ppl-max-len", "200", "--ppl-heldout-fraction", "0.3", "--device", "cpu", "--out", str(out),
                 "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["evals"] == ["ppl", "niah"]
    assert results["perplexity"]["docs"] == 3
    assert [(b["start"], b["end"]) for b in results["perplexity"]["buckets"]] == [(0, 200)]
    assert results["perplexity"]["buckets"][0]["ppl"] > 1
    assert results["niah"]["tasks"]["single_2"]["by_length"]["300"]["by_depth"].keys() == {"0.5"}
    assert "## Perplexity by token position" in (out / "report.md").read_text()
    assert (out / "perplexity_by_position.png").is_file()


def test_haystack_from_heldout_documents_only(model_dir, tmp_path, monkeypatch):
    """--haystack-heldout: the single_2/3 haystacks come from the documents HALO's split holds out (text a student
    converted on that source never trained on), each one exactly; the setting is recorded with the results."""
    from transformers import AutoTokenizer

    from hypenet.data import tokenize_corpus
    from hypenet.eval.documents import heldout_documents

    monkeypatch.setenv("HOME", str(tmp_path))  # hypenet.data caches tokenised corpora under ~/.cache
    source = write_source(tmp_path)
    texts = SOURCE_TEXTS
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    corpus = tokenize_corpus(str(source), tokenizer, heldout_fraction=0.3, seed=0, progress=False)
    held_out = [t for t in texts if any(len(d) == len(tokenizer(t)["input_ids"]) + 1 and
                                        d[:-1].tolist() == tokenizer(t)["input_ids"] for d in corpus.heldout_docs)]
    assert 0 < len(held_out) == len(corpus.heldout_docs) < len(texts)

    haystack = heldout_documents(tokenizer, str(source), heldout_fraction=0.3, progress=False)
    assert haystack == held_out  # every held-out document, in corpus order, and nothing HALO trains on
    assert heldout_documents(tokenizer, str(source), 0.3, max_chars=1, progress=False) == held_out[:1]
    with pytest.raises(ValueError, match="no held-out document at heldout_fraction=0.0"):
        heldout_documents(tokenizer, str(source), heldout_fraction=0.0, progress=False)

    out = tmp_path / "eval"
    assert main([str(model_dir), "--evals", "niah", "--tasks", "single_2", "--haystack", str(source),
                 "--haystack-heldout", "--ppl-heldout-fraction", "0.3", "--niah-lengths", "300", "--niah-depths",
                 "0.5", "--niah-samples", "1", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["haystack_heldout"] is True
    assert results["niah"]["tasks"]["single_2"]["by_length"]["300"]["by_depth"].keys() == {"0.5"}


def test_perplexity_scored_over_fewer_tokens_of_the_same_documents(model_dir, tmp_path, monkeypatch):
    """--ppl-score-len: the documents are the ones --ppl-max-len chooses (the longest held-out ones first), each
    scored over its first N tokens only: a teacher within its window on a long-context run's documents."""
    from hypenet.eval.documents import heldout_token_docs
    from hypenet.eval.models import load_model_for_eval
    from hypenet.eval.perplexity import perplexity_by_bucket

    monkeypatch.setenv("HOME", str(tmp_path))
    source = write_source(tmp_path)
    common = [str(model_dir), "--evals", "ppl", "--ppl-source", str(source), "--ppl-docs", "2",
              "--ppl-heldout-fraction", "0.3", "--device", "cpu", "--no-progress"]
    assert main([*common, "--ppl-max-len", "200", "--ppl-score-len", "64", "--out", str(tmp_path / "a")]) == 0
    scored = json.loads((tmp_path / "a" / "results.json").read_text())["perplexity"]

    model, tokenizer = load_model_for_eval(str(model_dir), "cpu")
    docs = heldout_token_docs(tokenizer, 2, 200, str(source), 0.3, progress=False)
    assert scored == perplexity_by_bucket(model, docs, 64, progress=False)
    assert scored["max_len"] == 64 and scored["buckets"][0]["tokens"] == sum(min(len(d), 64) - 1 for d in docs)
    # --ppl-max-len 64 alone would choose its documents for 64 tokens: here, other ones
    assert [len(d) for d in heldout_token_docs(tokenizer, 2, 64, str(source), 0.3, progress=False)] != \
        [len(d) for d in docs]


def test_niah_lengths_run_in_two_parts_merge_into_the_evaluation_of_both(model_dir, tmp_path):
    grid = ["--evals", "niah,niah_forced", "--tasks", "single_1,single_3", "--niah-depths", "0,0.5",
            "--niah-samples", "2", "--batch-size", "3", "--device", "cpu", "--no-progress"]
    assert main([str(model_dir), *grid, "--niah-lengths", "200,300", "--out", str(tmp_path / "both")]) == 0
    assert main([str(model_dir), *grid, "--niah-lengths", "300", "--out", str(tmp_path / "300")]) == 0
    assert main([str(model_dir), *grid, "--niah-lengths", "200", "--out", str(tmp_path / "200")]) == 0
    assert main(["merge-evals", str(tmp_path / "300"), str(tmp_path / "200"), "--out", str(tmp_path / "merged")]) == 0
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["niah"] == both["niah"] and merged["niah_forced"] == both["niah_forced"]
    assert merged["settings"]["niah_lengths"] == [200, 300]

    def samples(folder):
        rows = [json.loads(line) for line in (tmp_path / folder / "niah_samples.jsonl").read_text().splitlines()]
        return sorted(rows, key=lambda r: (r["task"], r["context_len"], r["depth"], r["seed"]))

    assert samples("merged") == samples("both")  # the same prompts, answered alike


def test_an_evaluation_stopped_part_way_resumes_after_its_last_finished_evaluation(model_dir, tmp_path, monkeypatch):
    """Each finished evaluation is saved to partial.json; --resume reads those back (the same model files and
    options, or it refuses) and runs the rest, with the results of a run that was never stopped."""
    import os

    import hypenet.eval.cli as cli

    monkeypatch.setenv("HOME", str(tmp_path))  # hypenet.data caches tokenised corpora under ~/.cache
    source = write_source(tmp_path)
    options = ["--evals", "ppl,niah_forced,niah", "--tasks", "single_1", "--niah-lengths", "240", "--niah-depths",
               "0,1", "--niah-samples", "1", "--ppl-source", str(source), "--ppl-docs", "2", "--ppl-max-len", "128",
               "--device", "cpu", "--no-progress"]
    assert main([str(model_dir), *options, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert not (tmp_path / "whole" / cli.PARTIAL).exists()  # a finished evaluation leaves none

    out = tmp_path / "stopped"
    niah = cli._niah

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_niah", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([str(model_dir), *options, "--out", str(out)])
    partial = json.loads((out / cli.PARTIAL).read_text())
    assert list(partial["done"]) == ["ppl", "niah_forced"] and not (out / "results.json").exists()

    with pytest.raises(InvalidInputError, match=r"made with other options \(niah_samples\)"):
        main([str(model_dir), *options, "--niah-samples", "2", "--out", str(out), "--resume"])

    def not_again(*args, **kwargs):
        raise AssertionError("a finished evaluation ran again")

    monkeypatch.setattr(cli, "_niah", niah)
    monkeypatch.setattr(cli, "_perplexity", not_again)
    monkeypatch.setattr(cli, "_niah_forced", not_again)
    assert main([str(model_dir), *options, "--out", str(out), "--resume"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    for key in ("perplexity", "niah_forced", "niah", "footprint", "evals"):
        assert resumed[key] == whole[key], key
    assert resumed["timing_s"]["ppl"] == partial["done"]["ppl"]["timing_s"]["ppl"]  # as measured when it ran
    assert (out / "niah_forced_samples.jsonl").read_text() == (tmp_path / "whole" / "niah_forced_samples.jsonl"
                                                                ).read_text()
    assert not (out / cli.PARTIAL).exists()

    # a partial evaluation of the model as it was: refused once the model's files changed
    (out / cli.PARTIAL).write_text(json.dumps(partial))
    weights = next(model_dir.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        with pytest.raises(InvalidInputError, match="is not the one .* was made with"):
            main([str(model_dir), *options, "--out", str(out), "--resume"])
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # without --resume it starts over: every evaluation runs
    monkeypatch.setattr(cli, "_perplexity", not_again)
    with pytest.raises(AssertionError, match="ran again"):
        main([str(model_dir), *options, "--out", str(out)])


def test_a_niah_evaluation_stopped_between_batches_resumes_at_the_next_batch(model_dir, tmp_path, monkeypatch,
                                                                              capsys):
    """NIAH keeps each batch's answers as it goes (niah_answers.jsonl): stopped in its third batch of four, it is
    resumed with --resume at the third, and gives what a run never stopped gives, answer for answer. A line that a
    kill cut short is answered again; without --resume the kept answers are not used."""
    from transformers import LlamaForCausalLM

    import hypenet.eval.cli as cli

    options = ["--evals", "niah", "--tasks", "single_1", "--niah-lengths", "200,240", "--niah-depths", "0,1",
               "--niah-samples", "2", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    generate, calls = LlamaForCausalLM.generate, []

    def counted(self, *args, stop_at=None, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", counted)
    assert main([str(model_dir), *options, "--out", str(tmp_path / "whole")]) == 0
    assert len(calls) == 4  # 8 prompts, 2 per batch
    whole = tmp_path / "whole"

    out, answers = tmp_path / "stopped", tmp_path / "stopped" / cli.ANSWERS.format("niah")
    calls.clear()
    monkeypatch.setattr(LlamaForCausalLM, "generate", lambda self, *a, **k: counted(self, *a, stop_at=3, **k))
    with pytest.raises(KeyboardInterrupt):
        main([str(model_dir), *options, "--out", str(out)])
    kept = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(kept) == 4 and not (out / "results.json").exists() and (out / cli.PARTIAL).is_file()
    rows = {(r["context_len"], r["depth"], r["seed"]): r for r in map(json.loads, (whole / "niah_samples.jsonl")
                                                                     .read_text().splitlines())}
    for row in kept:  # the rows of niah_samples.jsonl, with the prompt's hash
        assert {k: v for k, v in row.items() if k != "prompt_sha256"} == rows[row["context_len"], row["depth"],
                                                                              row["seed"]]
    with open(answers, "a") as f:  # the fifth row, cut short by a kill as it was written
        f.write(json.dumps(kept[0])[:40])

    calls.clear()
    monkeypatch.setattr(LlamaForCausalLM, "generate", counted)
    assert main([str(model_dir), *options, "--out", str(out), "--resume"]) == 0
    assert len(calls) == 2
    err = capsys.readouterr().err
    assert f"--resume: no evaluation was finished in {out / cli.PARTIAL}; each starts again from what it kept" in err
    assert f"[hypenet eval] NIAH: 4 of 8 answers read back from {answers}" in err
    assert json.loads((out / "results.json").read_text())["niah"] == json.loads((whole / "results.json").read_text()
                                                                                )["niah"]
    assert (out / "niah_samples.jsonl").read_text() == (whole / "niah_samples.jsonl").read_text()
    assert not answers.exists() and not (out / cli.PARTIAL).exists()

    # kept answers without --resume: the evaluation starts over
    again = tmp_path / "again"
    calls.clear()
    monkeypatch.setattr(LlamaForCausalLM, "generate", lambda self, *a, **k: counted(self, *a, stop_at=2, **k))
    with pytest.raises(KeyboardInterrupt):
        main([str(model_dir), *options, "--out", str(again)])
    assert len((again / cli.ANSWERS.format("niah")).read_text().splitlines()) == 2
    calls.clear()
    monkeypatch.setattr(LlamaForCausalLM, "generate", counted)
    assert main([str(model_dir), *options, "--out", str(again)]) == 0
    assert len(calls) == 4
    assert (again / "niah_samples.jsonl").read_text() == (whole / "niah_samples.jsonl").read_text()


def test_the_answer_log_skips_a_line_cut_short_and_writes_the_next_row_on_a_line_of_its_own(tmp_path):
    from hypenet.eval.niah import AnswerLog, NiahSample

    samples = [NiahSample(task="single_1", context_len=100, depth=0.5, seed=i, key=f"k{i}", value=f"{i}",
                          prompt=f"p{i}", add_special_tokens=True, n_tokens=100, needle_depth=0.5, max_new_tokens=12)
               for i in range(3)]
    log = AnswerLog(tmp_path / "answers.jsonl")
    assert log.read(samples) == {}
    log.append(samples, [0], ["a0"])
    with open(log.path, "a") as f:
        f.write('{"prompt_sha256": "')  # a row cut short
    log.append(samples, [2, 1], ["a2", "a1"])
    assert log.read(samples) == {0: "a0", 1: "a1", 2: "a2"}
    assert len(log.path.read_text().splitlines()) == 4
    other = [NiahSample(**{**samples[0].__dict__, "prompt": "another prompt"})]
    assert log.read(other) == {}  # answers are kept by prompt


def test_logit_scaling_base_is_set_for_the_evaluation_and_reported(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    model_dir = tmp_path / "hypenet"
    tiny_hypenet(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    common = [str(model_dir), "--evals", "niah", "--tasks", "single_1", "--niah-lengths", "200", "--niah-depths",
              "0.5", "--niah-samples", "1", "--device", "cpu", "--no-progress"]
    assert main([*common, "--logit-scaling-base", "8000", "--out", str(tmp_path / "a")]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["footprint"]["logit_scaling_base"] == 8000.0 and results["settings"]["logit_scaling_base"] == 8000.0
    assert "| attention logit-scaling base (HyPE) | 8000 |" in (tmp_path / "a" / "report.md").read_text()
    assert main([*common, "--out", str(tmp_path / "b")]) == 0  # without it: the checkpoint's own base
    assert json.loads((tmp_path / "b" / "results.json").read_text())["footprint"]["logit_scaling_base"] == 500.0
    with pytest.raises(SystemExit) as stop:
        main([*common, "--logit-scaling-base", "1", "--out", str(tmp_path / "c")])
    assert stop.value.code == 2
    assert "a number > 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["eval"], ["generate", "--prompt", "hi", "--device", "cpu"]])
def test_a_missing_model_is_one_line_not_a_traceback(tmp_path, capsys, command, monkeypatch):
    from hypenet.cli import main as hypenet

    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no-such-model"
    assert hypenet([command[0], str(missing), *command[1:]]) == 2
    said = capsys.readouterr().err.strip()
    assert said == f"error: {missing} does not exist (not a local folder or file, nor a hub id)"
    assert sorted(tmp_path.iterdir()) == []  # no empty runs/eval/no-such-model left behind


@pytest.mark.parametrize("command", [["eval"], ["generate", "--prompt", "hi", "--device", "cpu"]])
def test_a_folder_with_a_config_but_no_weights_is_one_line_not_a_traceback(model_dir, tmp_path, capsys, command):
    from hypenet.cli import main as hypenet

    bare = tmp_path / "bare"
    bare.mkdir()
    for path in model_dir.iterdir():  # the config and the tokenizer, without model.safetensors
        if path.suffix != ".safetensors":
            shutil.copy(path, bare / path.name)
    assert hypenet([command[0], str(bare), *command[1:]]) == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith(f"error: {bare} has a config.json but no weights (model.safetensors"), said


def test_an_out_that_is_a_file_is_refused_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    import hypenet.eval.models as eval_models
    from hypenet.cli import main as hypenet

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(eval_models, "load_model_for_eval", loaded)
    taken = tmp_path / "afile"
    taken.write_text("mine\n")
    assert hypenet(["eval", str(model_dir), "--evals", "ppl", "--out", str(taken)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {taken} is a file; pass a folder"
    assert taken.read_text() == "mine\n"


def test_no_progress_also_turns_off_transformers_loading_bar(model_dir, tmp_path, capfd, monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("HOME", str(tmp_path))
    source = write_source(tmp_path)
    common = [str(model_dir), "--evals", "ppl", "--ppl-source", str(source), "--ppl-docs", "1", "--ppl-max-len", "64",
              "--ppl-heldout-fraction", "0.3", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert "Loading weights" in capfd.readouterr().err  # (transformers' bar, shown without the option)
    assert main([*common, "--no-progress", "--out", str(tmp_path / "b")]) == 0
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # on again for whatever the process does next


def test_default_out_is_named_after_the_conversion_and_another_models_results_are_kept(model_dir, tmp_path, capsys,
                                                                                        monkeypatch):
    from hypenet.cli import main as hypenet
    from hypenet.eval.cli import model_label

    monkeypatch.chdir(tmp_path)
    for run in ("run_a", "run_b"):  # two conversions' exports: RUN/model
        shutil.copytree(model_dir, tmp_path / run / "model")
    (tmp_path / "weights.gguf").write_bytes(b"")
    assert [model_label(spec) for spec in ("run_a/model", str(tmp_path / "run_b" / "model"), "weights.gguf",
                                              "Qwen/Qwen3-1.7B", "teacher", "model")] == [
        "run_a", "run_b", "weights", "Qwen3-1.7B", "teacher", "model"]
    common = ["--evals", "niah", "--tasks", "single_1", "--niah-lengths", "200", "--niah-depths", "0.5",
              "--niah-samples", "1", "--device", "cpu", "--no-progress"]
    for run in ("run_a", "run_b"):
        assert hypenet(["eval", f"{run}/model", *common]) == 0
        results = json.loads((tmp_path / "runs" / "eval" / run / "results.json").read_text())
        assert results["model"] == f"{run}/model" and results["label"] == run
    capsys.readouterr()
    a_results = (tmp_path / "runs" / "eval" / "run_a" / "results.json").read_text()
    assert hypenet(["eval", "run_b/model", *common, "--out", "runs/eval/run_a"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: runs/eval/run_a holds the evaluation of run_a/model; pass another --out, or --overwrite to replace "
        "it")
    assert (tmp_path / "runs" / "eval" / "run_a" / "results.json").read_text() == a_results
    assert hypenet(["eval", "./run_a/model", *common, "--out", "runs/eval/run_a"]) == 0  # the same model: rewritten
    assert hypenet(["eval", "run_b/model", *common, "--out", "runs/eval/run_a", "--overwrite"]) == 0
    assert json.loads((tmp_path / "runs" / "eval" / "run_a" / "results.json").read_text())["model"] == "run_b/model"

    # compare evaluates each model into --out/LABEL: a rerun with another student keeps the first one's evaluation
    assert hypenet(["compare", "runs/eval/run_b", "run_a/model", "--out", "cmp", *common]) == 0
    assert json.loads((tmp_path / "cmp" / "student" / "results.json").read_text())["model"] == "run_a/model"
    capsys.readouterr()
    assert hypenet(["compare", "runs/eval/run_b", "run_b/model", "--out", "cmp", *common]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: cmp/student holds the evaluation of run_a/model; pass another --out, or --overwrite to replace it")
    assert hypenet(["compare", "runs/eval/run_b", "run_b/model", "--out", "cmp", "--overwrite", *common]) == 0
    assert json.loads((tmp_path / "cmp" / "student" / "results.json").read_text())["model"] == "run_b/model"


def test_a_run_is_named_after_the_conversion_from_inside_its_folders_too(tmp_path, monkeypatch):
    """`hypenet eval model` in RUN (or `.` in RUN/model, `..` below it) names RUN, as `RUN/model` does: the label
    was "model" (and "" for `.`, whose default --out was runs/eval itself)."""
    from hypenet.eval.cli import model_label

    (tmp_path / "run_a" / "model" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "run_a")
    assert [model_label(spec) for spec in ("model", "./model", "model/")] == ["run_a"] * 3
    monkeypatch.chdir(tmp_path / "run_a" / "model")
    assert [model_label(spec) for spec in (".", "../model")] == ["run_a"] * 2
    monkeypatch.chdir(tmp_path / "run_a" / "model" / "sub")
    assert model_label("..") == "run_a"
    monkeypatch.chdir(tmp_path / "run_a")
    assert model_label(".") == "run_a"  # a folder not named model keeps its own name
    assert model_label(str(tmp_path / "run_a" / "model" / "sub")) == "sub"


def test_an_evaluation_replaced_resumed_when_finished_or_aimed_at_a_comparison(model_dir, tmp_path, capsys,
                                                                               monkeypatch):
    """The same model evaluated again into its folder with other evaluations: the earlier evaluation's plots and
    samples go with it. `--resume` of a finished evaluation does nothing. An eval into a comparison's --out is
    refused."""
    from hypenet.cli import main as hypenet

    monkeypatch.chdir(tmp_path)
    shutil.copytree(model_dir, tmp_path / "run" / "model")
    niah = ["--evals", "niah", "--tasks", "single_1", "--niah-lengths", "200", "--niah-depths", "0.5",
            "--niah-samples", "1", "--device", "cpu", "--no-progress"]
    out = tmp_path / "runs" / "eval" / "run"
    assert hypenet(["eval", "run/model", *niah]) == 0
    assert (out / "niah_samples.jsonl").is_file() and list(out.glob("niah_*.png"))
    (out / "notes.txt").write_text("mine")
    ppl = ["--evals", "ppl", "--ppl-docs", "1", "--ppl-max-len", "64", "--device", "cpu", "--no-progress"]
    assert hypenet(["eval", "run/model", *ppl]) == 0
    assert json.loads((out / "results.json").read_text())["evals"] == ["ppl"]
    assert not (out / "niah_samples.jsonl").exists() and not list(out.glob("niah_*.png"))
    assert (out / "notes.txt").read_text() == "mine" and (out / "perplexity_by_position.png").is_file()
    capsys.readouterr()

    before = (out / "results.json").read_text()
    assert hypenet(["eval", "run/model", *ppl, "--resume"]) == 0
    assert "already holds this evaluation, finished; nothing to do" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before
    assert hypenet(["eval", "run/model", *ppl, "--ppl-docs", "2", "--resume"]) == 0  # other options: evaluated
    assert json.loads((out / "results.json").read_text())["settings"]["ppl_docs"] == 2

    assert hypenet(["compare", "runs/eval/run", "runs/eval/run", "--labels", "a,b", "--out", "cmp"]) == 0
    capsys.readouterr()
    assert hypenet(["eval", "run/model", *ppl, "--out", "cmp"]) == 2
    assert "cmp holds a report that is not one model's evaluation (a comparison?)" in capsys.readouterr().err


def test_only_missing_inputs_lose_their_traceback(monkeypatch, capsys):
    """`error: ...` and exit 2 for a path the user named; any other FileNotFoundError is a bug: it keeps a traceback."""
    from hypenet.cli import main as hypenet
    from hypenet.errors import MissingInputError
    from hypenet.eval import cli as eval_cli

    def command(error):
        def run(args):
            raise error
        return run

    monkeypatch.setattr(eval_cli, "run_eval", command(MissingInputError("model x does not exist")))
    assert hypenet(["eval", "x"]) == 2
    assert capsys.readouterr().err == "error: model x does not exist\n"
    monkeypatch.setattr(eval_cli, "run_eval", command(FileNotFoundError(2, "No such file", "internal.json")))
    with pytest.raises(FileNotFoundError, match="internal.json"):
        hypenet(["eval", "x"])


def test_niah_tasks_are_checked_before_the_model_loads(tmp_path, capsys):
    from hypenet.cli import main as hypenet

    missing = str(tmp_path / "no-model")  # never reached: the options fail first
    assert hypenet(["eval", missing, "--tasks", "single_1,single_4"]) == 2
    assert capsys.readouterr().err.startswith("error: --tasks: unknown NIAH task 'single_4'; choose from ['single_1'")
    assert hypenet(["eval", missing, "--evals", "niah_forced", "--tasks", "single_1,multivalue,multiquery"]) == 2
    assert capsys.readouterr().err.startswith("error: --evals niah_forced gives one value as the answer; --tasks "
                                              "multivalue,multiquery ask for several")


def test_python_m_entries_print_an_input_error_as_hypenet_does(tmp_path):
    """`python -m hypenet.eval` and `python -m hypenet.bench` end as `hypenet eval` and `hypenet bench` do on an input
    the user must fix: one line on stderr, exit code 2, no traceback."""
    import os
    import subprocess
    import sys

    for args, said in [(["hypenet.eval", str(tmp_path / "no-model"), "--tasks", "single_9"], "error: --tasks: "),
                       (["hypenet.bench", "tiny-hypenet", "--out", str(tmp_path / "b")], "error: hypenet bench times")]:
        done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert done.returncode == 2 and done.stderr.startswith(said) and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("option, value, said", [
    ("--niah-depths", "0,1.5", "comma list of fractions of the haystack in [0, 1]"),
    ("--niah-lengths", "4K,0", "comma list of positive counts"),
    ("--niah-lengths", "4X", "comma list of positive counts"),
    ("--copy-lengths", "", "comma list of positive counts"),
    ("--niah-samples", "0", "a positive whole number"),
    ("--batch-size", "-1", "a positive whole number"),
    ("--ppl-max-len", "0", "a positive whole number"),
    ("--ppl-docs", "two", "a positive whole number"),
    ("--ppl-heldout-fraction", "1", "a fraction in [0, 1)"),
    ("--dtype", "int8", "invalid choice: 'int8'"),
])
def test_an_option_that_cannot_work_is_refused_before_anything_runs(tmp_path, capsys, option, value, said):
    from hypenet.cli import main as hypenet

    for command in (["eval", str(tmp_path / "no-model")], ["compare", "teacher", str(tmp_path / "no-model")]):
        with pytest.raises(SystemExit) as stop:  # argparse's usage error: nothing loaded, nothing written
            hypenet([*command, option, value, "--out", str(tmp_path / "out")])
        assert stop.value.code == 2
        assert f"argument {option}: {said}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_niah_forced_refuses_samples_asking_for_several_values():
    from test_eval_tiny import HAYSTACK_DOCS

    from hypenet.eval.niah import build_niah_sample
    from hypenet.eval.niah_forced import evaluate_forced

    tokenizer = tiny_tokenizer()
    sample = build_niah_sample(tokenizer, "multiquery", 1200, 0.5, seed=0, haystack_docs=HAYSTACK_DOCS)
    with pytest.raises(ValueError, match="task\\(s\\) multiquery ask for several"):
        evaluate_forced(None, tokenizer, [sample])


def test_lengths_are_written_as_the_bench_writes_them():
    from hypenet.cli import build_parser

    args = build_parser().parse_args(["eval", "model", "--niah-lengths", "4K,1000,0.5K", "--copy-lengths", "64k"])
    assert args.niah_lengths == [4096, 1000, 512] and args.copy_lengths == [65536]
    compare = build_parser().parse_args(["compare", "teacher", "student", "--niah-lengths", "128K"])
    assert compare.niah_lengths == [131072]


def test_a_niah_length_shorter_than_its_prompt_is_one_line(tmp_path, capsys):
    from hypenet.cli import main as hypenet

    tokenizer = tiny_tokenizer()
    model_dir = tmp_path / "hypenet"
    tiny_hypenet(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    assert hypenet(["eval", str(model_dir), "--evals", "niah", "--tasks", "single_1", "--niah-lengths", "20",
                    "--niah-depths", "0.5", "--niah-samples", "1", "--device", "cpu", "--no-progress",
                    "--out", str(tmp_path / "out")]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: context length 20 is too short for a single_1 prompt: the template alone takes "
                        r"\d+ tokens \(raise --niah-lengths\)\.", said)


def test_teacher_and_embedded_are_one_model_in_an_evaluations_folder(tmp_path):
    """docs/EVAL.md's examples evaluate `teacher`, then `embedded`, into the default runs/eval/teacher: one model by
    two names, so the second replaces the first's evaluation instead of being refused as another model's."""
    from argparse import Namespace

    from hypenet.eval.cli import _check_out

    (tmp_path / "results.json").write_text(json.dumps({"model": "teacher"}))
    _check_out(tmp_path, "embedded", Namespace(overwrite=False))
    with pytest.raises(InvalidInputError, match="holds the evaluation of teacher; pass another --out"):
        _check_out(tmp_path, str(tmp_path / "other-model"), Namespace(overwrite=False))


def test_every_name_of_the_embedded_teacher_is_the_teacher_unless_a_local_path_has_it(tmp_path, monkeypatch):
    """`hypenet eval smollm2` (or `default`) evaluated the embedded teacher, as `teacher` does, but its label and
    default --out were `smollm2`, and an --out holding `teacher`'s results refused it as another model. Every name that
    loads it is "teacher" now; a local folder of that name is the user's own model, named as a folder is."""
    from hypenet.eval.cli import _check_out, model_label
    from hypenet.teachers.load import EMBEDDED_NAMES

    monkeypatch.chdir(tmp_path)
    assert [model_label(name) for name in EMBEDDED_NAMES] == ["teacher"] * len(EMBEDDED_NAMES)
    out = tmp_path / "runs" / "eval" / "teacher"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"model": "teacher"}))
    for name in EMBEDDED_NAMES:
        _check_out(out, name, argparse.Namespace())  # the same model: no refusal
    with pytest.raises(InvalidInputError, match="holds the evaluation of teacher"):
        _check_out(out, "Qwen/Qwen3-1.7B", argparse.Namespace())
    (tmp_path / "smollm2").mkdir()  # the user's own folder of that name
    assert model_label("smollm2") == "smollm2"
    with pytest.raises(InvalidInputError, match="holds the evaluation of teacher"):
        _check_out(out, "smollm2", argparse.Namespace())
