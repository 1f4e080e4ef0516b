"""`hypenet eval MODEL`, `hypenet compare TEACHER STUDENT` and `hypenet merge-evals PART PART`."""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from ..errors import InvalidInputError, MissingInputError
from ..units import checked, positive_int, tokens

DEFAULT_NIAH_LENGTHS = "1024,2048,4096,8192,16384,32768,65536"
DEFAULT_NIAH_DEPTHS = "0,0.25,0.5,0.75,1"
EVALS = ("ppl", "niah", "niah_forced", "lm_eval", "needle_attention", "copy")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# --niah-depths: fractions of the haystack in [0, 1], at least one; --niah-lengths / --copy-lengths: positive token
# counts (K = 1024, M = 1024K), at least one
_depths = checked(_floats, lambda ds: bool(ds) and all(0 <= d <= 1 for d in ds),
                  "comma list of fractions of the haystack in [0, 1], e.g. 0,0.5,1")
_lengths = checked(tokens, lambda ns: bool(ns) and all(n >= 1 for n in ns),
                   "comma list of positive counts (K = 1024, M = 1024K), at least one, e.g. 4K,64K")
_fraction = checked(float, lambda x: 0 <= x < 1, "a fraction in [0, 1)")


def _base(text: str) -> float | str:
    """--logit-scaling-base: a number > 1, or off."""
    if text.strip().lower() == "off":
        return "off"
    try:
        base = float(text)
    except ValueError:
        base = None
    if base is None or base <= 1:
        raise argparse.ArgumentTypeError(f"a number > 1 (the export's choice is in the model's config.json as "
                                         f"attention_logit_scaling_base), or off; got {text!r}")
    return base


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
    """Add the `eval`, `compare` and `merge-evals` subcommands to an argparse subparsers object."""
    eval_parser = subparsers.add_parser(
        "eval", help="perplexity per length bucket, NIAH, lm-eval on one model",
        description="Evaluate a causal LM (HF directory, .gguf file, or 'teacher' for the embedded SmolLM2-135M): "
                    "perplexity per context-length bucket (ppl), RULER NIAH-Single-1/2/3 over lengths x depths "
                    "(niah), and on request NIAH with the answer given (niah_forced), the copy eval (copy), the "
                    "attention on the needle (needle_attention) and lm-evaluation-harness tasks (lm_eval): --evals. "
                    "Writes results.json, report.md and PNGs to --out.")
    eval_parser.add_argument("model", metavar="MODEL", help="HF model directory, .gguf file, or 'teacher'/'embedded'")
    eval_parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/eval/<model name>)")
    eval_parser.add_argument("--label", default=None,
                             help="name of the model in reports and in the default --out (default: MODEL's name; "
                                  "for a conversion's RUN/model folder, RUN's)")
    eval_parser.add_argument("--overwrite", action="store_true",
                             help="replace the results in --out when they are another model's (refused without it)")
    eval_parser.add_argument("--logit-scaling-base", type=_base, default=None, metavar="A",
                             help="a HypeNet model only: HyPE's logit-scaling base for this evaluation (a number > 1, "
                                  "or off) instead of the one the export chose by held-out loss (its config.json)")
    _add_eval_options(eval_parser)
    eval_parser.set_defaults(func=run_eval)

    compare_parser = subparsers.add_parser(
        "compare", help="teacher vs student(s) report (markdown + PNG)",
        description="Side-by-side report of two or more models (a teacher and its students, or an ablation). Each "
                    "is an eval output (a results.json or the folder holding it) or a model, which is then evaluated "
                    "first with the eval options below.")
    compare_parser.add_argument("teacher", metavar="TEACHER", help="the first model (an eval output or a model)")
    compare_parser.add_argument("students", metavar="STUDENT", nargs="+", help="the others, the same way")
    compare_parser.add_argument("--out", type=Path, default=Path("runs/compare"),
                                help="output folder (default runs/compare)")
    compare_parser.add_argument("--bench", type=Path, default=None,
                                help="benchmark JSON: rows {model, context_len, <metric>: value} (speed, memory)")
    compare_parser.add_argument("--labels", default=None,
                                help="names of the models in the report (default teacher,student for two models, "
                                     "else teacher,student1,student2,...)")
    compare_parser.add_argument("--overwrite", action="store_true",
                                help="replace a model's evaluation in --out/LABEL when it is another model's (refused "
                                     "without it)")
    _add_eval_options(compare_parser)
    compare_parser.set_defaults(func=run_compare)

    merge_parser = subparsers.add_parser(
        "merge-evals", help="one evaluation from parts of it run separately (e.g. NIAH lengths split across jobs)",
        description="Merge evaluations of one model that were run in parts, e.g. `hypenet eval --niah-lengths "
                    "4096,8192` and `--niah-lengths 16384,32768` in two jobs, into one folder as a single `hypenet "
                    "eval` would have written it: results.json with every NIAH summary recomputed from the parts' "
                    "samples, the samples files, heatmaps and report.md. The parts must share the model and the "
                    "NIAH grid settings (depths, samples, tasks, haystack, seed) and not repeat a length; other "
                    "evaluations (perplexity, copy, lm-eval) are taken from the one part that ran each.")
    merge_parser.add_argument("parts", metavar="PART", nargs="+", help="eval output folders (or their results.json)")
    merge_parser.add_argument("--out", type=Path, required=True, help="new folder for the merged evaluation")
    merge_parser.add_argument("--label", default=None, help="name of the model in the report (default: the first "
                                                           "part's)")
    merge_parser.set_defaults(func=run_merge)


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    from .models import DTYPE_NAMES

    parser.add_argument("--evals", type=_names, default=None,
                        help=f"comma list from {','.join(EVALS)} (default ppl,niah; with --lm-eval alone: lm_eval)")
    niah = parser.add_argument_group("NIAH")
    niah.add_argument("--niah-lengths", type=_lengths, default=tokens(DEFAULT_NIAH_LENGTHS),
                      help=f"prompt lengths in tokens, e.g. 4K,64K (K = 1024; default {DEFAULT_NIAH_LENGTHS})")
    niah.add_argument("--niah-depths", type=_depths, default=_floats(DEFAULT_NIAH_DEPTHS),
                      help=f"needle depths as fractions of the haystack (default {DEFAULT_NIAH_DEPTHS})")
    niah.add_argument("--niah-samples", type=positive_int, default=4,
                      help="samples per task x length x depth (default 4)")
    niah.add_argument("--tasks", type=_names, default=["single_1", "single_2", "single_3"],
                      help="NIAH tasks (default single_1,single_2,single_3); also RULER's multikey_1, multikey_2, "
                           "multikey_3, multivalue and multiquery")
    niah.add_argument("--haystack", default="builtin",
                      help="hypenet.data document source for the real-text haystacks of single_2/3, multikey_1, "
                           "multivalue and multiquery (default builtin)")
    niah.add_argument("--haystack-heldout", action="store_true",
                      help="take those haystacks from the held-out documents of --haystack only (HALO's split, "
                           "as for perplexity: --ppl-heldout-fraction, --seed), text that a student converted on "
                           "that source never trained on (default: its first documents)")
    niah.add_argument("--forced-answer", default=" {value}",
                      help="--evals niah_forced: the answer appended to each prompt, {value} standing for the "
                           "needle's value (default ' {value}'; ': {value}' is the needle's own form)")
    niah.add_argument("--chat-template", action="store_true",
                      help="wrap prompts in the tokenizer's chat template (default: plain text, as RULER base models)")
    niah.add_argument("--yarn", action="store_true",
                      help="also run NIAH beyond the trained window with YaRN (factor = length / trained length); "
                           "needle_attention is measured there with YaRN instead of as-is")
    niah.add_argument("--trained-len", type=positive_int, default=None,
                      help="trained context length for --yarn (default: from the config)")
    niah.add_argument("--max-batch-tokens", type=positive_int, default=131072,
                      help="cap on batch size x prompt length for long prompts (default 131072)")
    niah.add_argument("--niah-cache", type=Path, default=None,
                      help="folder of built NIAH prompts, reused by every model with the same tokenizer and "
                           "settings (default $HYPENET_CACHE/niah, i.e. ~/.cache/hypenet/niah; 'none' to rebuild)")
    ppl = parser.add_argument_group("perplexity")
    ppl.add_argument("--ppl-max-len", type=positive_int, default=None,
                     help="tokens per document evaluated (default: the longest NIAH length)")
    ppl.add_argument("--ppl-score-len", type=positive_int, default=None,
                     help="score only the first N tokens of each document (chosen for --ppl-max-len as usual), "
                          "e.g. a teacher within its window on the documents of a long-context run (default: all)")
    ppl.add_argument("--ppl-docs", type=positive_int, default=8, help="held-out documents (default 8)")
    ppl.add_argument("--ppl-source", default="builtin", help="hypenet.data document source (default builtin)")
    ppl.add_argument("--ppl-heldout-fraction", type=_fraction, default=None,
                     help="held-out split of the source, as in HALO's data.heldout_fraction (default: HALO's)")
    copying = parser.add_argument_group("copying a span read earlier (--evals copy; held-out documents of "
                                        "--ppl-source)")
    copying.add_argument("--copy-lengths", type=_lengths, default=None,
                         help="sample lengths in tokens (default: the NIAH lengths)")
    copying.add_argument("--copy-span", type=int, default=32, help="tokens copied per sample (default 32)")
    copying.add_argument("--copy-samples", type=positive_int, default=8,
                         help="samples (documents) per length (default 8)")
    lm = parser.add_argument_group("lm-evaluation-harness")
    lm.add_argument("--lm-eval", type=_names, default=None, metavar="TASKS", help="comma list of lm-eval tasks")
    lm.add_argument("--lm-eval-include-path", action="append", default=None,
                    help="folder with extra lm-eval task YAMLs (repeatable)")
    lm.add_argument("--lm-eval-fewshot", type=int, default=None, help="few-shot examples (default: task's own)")
    lm.add_argument("--limit", default=None, help="lm-eval: documents per task (int) or fraction",
                    type=checked(float, lambda n: 0 < n < 1 or (n >= 1 and n == int(n)),
                                 "a whole number of documents per task (at least 1) or a fraction of them (0 to 1)"))
    attention = parser.add_argument_group("needle attention (--evals needle_attention; a diagnostic, no scores)")
    attention.add_argument("--needle-attention-samples", type=positive_int, default=2,
                           help="NIAH samples per task x length x depth whose attention on the needle is measured, "
                                "the NIAH options' grid otherwise (default 2)")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=positive_int, default=8,
                     help="NIAH generation and lm-eval batch size (default 8)")
    run.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    run.add_argument("--dtype", default="auto", choices=DTYPE_NAMES,
                     help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32 (or bfloat16, float16, float32)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the NIAH samples, lm-eval, and the held-out split (HALO's seed; default 0)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--resume", action="store_true",
                     help="continue an evaluation stopped part-way in the same --out: the evaluations it finished "
                          "(saved one by one to partial.json) are read back, if the model's files and the options "
                          "are the same; without it an evaluation starts over")


def _selected_evals(args) -> list[str]:
    evals = list(args.evals) if args.evals is not None else (["lm_eval"] if args.lm_eval else ["ppl", "niah"])
    unknown = [e for e in evals if e not in EVALS]
    if unknown:
        raise InvalidInputError(f"--evals: unknown evaluation(s) {unknown}; choose from {list(EVALS)}.")
    if "lm_eval" in evals and not args.lm_eval:
        raise InvalidInputError("--evals lm_eval needs --lm-eval TASKS (comma list of lm-eval task names).")
    if args.lm_eval and "lm_eval" not in evals:
        evals.append("lm_eval")
    missing = [path for path in args.lm_eval_include_path or [] if not Path(path).is_dir()]
    if "lm_eval" in evals and missing:  # (lm-eval would blame the tasks it then does not know)
        raise MissingInputError(f"--lm-eval-include-path {missing[0]} is not a folder: pass the folder that holds "
                                "the tasks' YAML files")
    if {"niah", "niah_forced", "needle_attention"} & set(evals):  # before the model loads
        from .niah import get_task

        try:
            tasks = [get_task(name) for name in args.tasks]
        except ValueError as error:
            raise InvalidInputError(f"--tasks: {error}") from None
        several = [task.name for task in tasks if task.answers > 1]
        if "niah_forced" in evals and several:
            raise InvalidInputError(f"--evals niah_forced gives one value as the answer; --tasks {','.join(several)} "
                                    "ask for several (leave them out of this evaluation)")
    if "niah_forced" in evals:  # before the model loads
        from .niah_forced import check_answer_form

        try:
            check_answer_form(args.forced_answer, "--forced-answer")
        except ValueError as error:
            raise InvalidInputError(f"{error}.") from None
    if "copy" in evals:  # before the model loads
        lengths = args.copy_lengths or args.niah_lengths
        short = [length for length in lengths if length < 8 * args.copy_span]
        if args.copy_span < 2 or short:
            raise InvalidInputError(f"--evals copy needs --copy-span of at least 2 and every length at least 8 x "
                                    f"--copy-span ({8 * args.copy_span}); got span {args.copy_span}, lengths "
                                    f"{short or lengths}.")
    return evals


def _log(message: str) -> None:
    print(f"[hypenet eval] {message}", file=sys.stderr, flush=True)


PARTIAL = "partial.json"  # the evaluations finished so far, for --resume
ANSWERS = "{}_answers.jsonl"  # a NIAH evaluation's answers as they come (niah.AnswerLog), for --resume
_NOT_RECORDED = ("func", "resume", "overwrite")  # options left out of results.json's settings
_NOT_SETTINGS = (*_NOT_RECORDED, "no_progress")  # options that do not change what an evaluation measures


def _model_files(spec: str) -> list:
    """What identifies the model behind `spec` on disk: each file's name, size and modification time (a model
    exported again to the same folder differs), or the spec itself when it names no file ('teacher')."""
    path = Path(str(spec))
    if not path.exists():
        return [str(spec)]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


def _resumed(partial: Path, state: dict, resume: bool) -> dict:
    """The evaluations an earlier run of the same model and options finished, saved in `partial` ({} without
    --resume or without the file); a partial.json of another model or other options is refused."""
    if not partial.is_file():
        if resume:
            _log(f"--resume: no {PARTIAL} in {partial.parent}; starting from the beginning")
        return {}
    if not resume:
        _log(f"{partial} of an earlier run is replaced (--resume would continue it)")
        return {}
    saved = json.loads(partial.read_text())
    if saved.get("model_files") != state["model_files"]:
        raise InvalidInputError(f"--resume: the model at {state['model']} is not the one {partial} was made with "
                                "(its files differ); run without --resume to evaluate it from the beginning.")
    now = {k: v for k, v in state["settings"].items() if k not in _NOT_SETTINGS}
    before = {k: v for k, v in saved.get("settings", {}).items() if k not in _NOT_SETTINGS}
    different = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    if different:
        raise InvalidInputError(f"--resume: {partial} was made with other options ({', '.join(different)}); give the "
                                "same options, or run without --resume to start over.")
    done = saved.get("done", {})
    if done:
        _log(f"--resume: reusing {', '.join(done)} from {partial}")
    else:  # a NIAH stopped part-way still reads back the answers it kept beside partial.json
        _log(f"--resume: no evaluation was finished in {partial}; each starts again from what it kept")
    return done


def _finished(out_dir: Path, state: dict) -> dict | None:
    """out_dir's results.json when it is the finished evaluation of the same model files with the same options."""
    try:
        earlier = json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    options = [{k: v for k, v in settings.items() if k not in _NOT_SETTINGS}
               for settings in (earlier.get("settings", {}), state["settings"])]
    return earlier if earlier.get("model_files") == state["model_files"] and options[0] == options[1] else None


@contextlib.contextmanager
def _quiet_loading(quiet: bool):
    """With --no-progress, transformers' own bars (its "Loading weights" one) are off too while the model loads."""
    from transformers.utils import logging as hf_logging

    turned_off = quiet and hf_logging.is_progress_bar_enabled()
    if turned_off:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if turned_off:
            hf_logging.enable_progress_bar()


def evaluate_model(spec: str, args, out_dir: Path, label: str) -> dict:
    """Run the selected evaluations of one model; write results.json, NIAH samples, PNGs and report.md to out_dir.
    Each finished evaluation is saved to out_dir/partial.json, so that --resume continues after the last one."""
    from ..machine import machine_info
    from .models import load_model_for_eval, model_footprint
    from .report import write_report

    evals = _selected_evals(args)
    results = {"model": str(spec), "label": label, "evals": evals, "timing_s": {},
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                            if k not in _NOT_RECORDED}}
    partial = out_dir / PARTIAL
    state = {"model": str(spec), "model_files": _model_files(spec), "settings": results["settings"]}
    finished = _finished(out_dir, state) if getattr(args, "resume", False) and not partial.is_file() else None
    if finished is not None:
        _log(f"--resume: {out_dir}/results.json already holds this evaluation, finished; nothing to do")
        return finished
    # a stopped NIAH evaluation's answers go on only under the partial.json that says whose they are
    answers_valid = getattr(args, "resume", False) and partial.is_file()
    done = _resumed(partial, state, getattr(args, "resume", False))
    replaced = (out_dir / "results.json").is_file() and not done  # an earlier evaluation, replaced by this one
    saved: dict = {}

    def step(name: str, keys: Sequence[str], work) -> bool:
        """Run one evaluation (`work` fills results[keys]), or read it back from an earlier run; save it to
        partial.json. True when it ran."""
        if name in done:
            results.update(done[name]["results"])
            results["timing_s"].update(done[name]["timing_s"])
        else:
            work()
        saved[name] = {"results": {k: results[k] for k in keys if k in results},
                       "timing_s": {k: v for k, v in results["timing_s"].items() if k in (name, f"{name}_phases")}}
        partial.write_text(json.dumps({**state, "done": saved}))
        return name not in done

    heatmaps: list[Path] = []
    started, begun = time.perf_counter(), time.time()
    with _quiet_loading(args.no_progress):
        model, tokenizer = load_model_for_eval(spec, args.device, args.dtype,  # (compare: no --logit-scaling-base)
                                               logit_scaling_base=getattr(args, "logit_scaling_base", None))
    results["timing_s"]["load"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)  # once the model is there: a failed load leaves no empty folder
    answer_logs = [out_dir / ANSWERS.format(name) for name in ("niah", "niah_yarn")]
    if not answers_valid:
        for path in answer_logs:
            path.unlink(missing_ok=True)
    partial.write_text(json.dumps({**state, "done": done}))  # whose answers a stopped NIAH evaluation keeps
    results["footprint"] = model_footprint(model)
    results["machine"] = machine_info(model.device)  # (of the run that finished it, when --resume went on elsewhere)
    _log(f"{label}: {results['footprint']['parameters'] / 1e6:.1f}M parameters on {model.device}, "
         f"loaded in {results['timing_s']['load']:.1f}s")
    from ..units import length_label

    window = results["footprint"]["trained_context_length"]
    past = [n for n in args.niah_lengths if n > window] if "niah" in evals else []
    if past and results["footprint"]["model_type"] != "hypenet":
        _log(f"NIAH lengths {', '.join(map(length_label, past))} are past {label}'s context window ({window} tokens, "
             "its max_position_embeddings): it is evaluated there as it is, as the paper tests its teachers"
             + ("" if args.yarn else "; --yarn adds a run with YaRN's RoPE scaling"))

    def timed_step(name: str, key: str, work) -> None:
        """`step` of an evaluation whose result is what `work` returns, kept as results[key]."""
        def run() -> None:
            results[key] = _timed(results, name, work)

        step(name, [key], run)

    haystack = functools.cache(lambda: _haystack_docs(args, tokenizer))  # read once, by the evaluations that need it
    if "ppl" in evals:
        timed_step("ppl", "perplexity", lambda: _perplexity(model, tokenizer, args))
    if "copy" in evals:
        timed_step("copy", "copy", lambda: _copy(model, tokenizer, args))
    if "lm_eval" in evals:
        from .lm_eval_adapter import run_lm_eval

        timed_step("lm_eval", "lm_eval", lambda: run_lm_eval(
            model, tokenizer, args.lm_eval, args.lm_eval_include_path, args.batch_size, _limit(args.limit),
            args.lm_eval_fewshot, args.seed))
    if "needle_attention" in evals:  # before NIAH, whose --yarn reloads the model (report.md draws it)
        timed_step("needle_attention", "needle_attention",
                   lambda: _needle_attention(model, tokenizer, args, haystack(), spec, results["footprint"]))
    if "niah_forced" in evals:  # before NIAH, whose --yarn reloads the model
        timed_step("niah_forced", "niah_forced", lambda: _niah_forced(model, tokenizer, args, haystack(), out_dir,
                                                                      _phases(results, "niah_forced")))
    if "niah" in evals:
        def niah() -> None:
            records = _timed(results, "niah", lambda: _niah(model, tokenizer, args, args.niah_lengths, haystack(),
                                                             _phases(results, "niah"), answer_logs[0]))
            heatmaps.extend(_write_niah(results, "niah", records, out_dir))

        if not step("niah", ["niah"], niah):  # its samples were written when it ran
            heatmaps.extend(_niah_heatmaps(results, "niah", out_dir))
        if args.yarn:
            model = None  # the YaRN runs reload it, scaled for each length
            gc.collect()

            def niah_yarn() -> None:
                records = _timed(results, "niah_yarn", lambda: _niah_with_yarn(spec, args, haystack(), results,
                                                                               answer_logs[1]))
                if records:
                    heatmaps.extend(_write_niah(results, "niah_yarn", records, out_dir))

            if not step("niah_yarn", ["niah_yarn", "yarn"], niah_yarn) and "niah_yarn" in results:
                heatmaps.extend(_niah_heatmaps(results, "niah_yarn", out_dir))
    results["timing_s"]["total"] = time.perf_counter() - started
    results["model_files"] = state["model_files"]  # (a --resume of the finished evaluation knows it is done)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    write_report([(label, results)], out_dir, f"Evaluation of {label}", extra_figures=heatmaps)
    partial.unlink(missing_ok=True)
    for path in answer_logs:  # (in niah_samples.jsonl now)
        path.unlink(missing_ok=True)
    if replaced:  # the earlier evaluation's plots and samples that this one did not write again
        for path in [*out_dir.glob("*.png"), *out_dir.glob("*_samples.jsonl"), *out_dir.glob("*_samples.jsonl.xz")]:
            if path.stat().st_mtime < begun:
                path.unlink()
    _log(f"wrote {out_dir}/results.json and report.md in {results['timing_s']['total']:.0f}s")
    return results


def _timed(results: dict, name: str, work):
    started = time.perf_counter()
    value = work()
    results["timing_s"][name] = time.perf_counter() - started
    return value


def _phases(results: dict, name: str) -> dict:
    """results["timing_s"][name + "_phases"]: seconds per phase (prompt building, generation) of an evaluation."""
    return results["timing_s"].setdefault(f"{name}_phases", {})


def _limit(limit: float | None):
    return int(limit) if limit is not None and limit >= 1 else limit


def _perplexity(model, tokenizer, args) -> dict:
    from .documents import heldout_token_docs
    from .perplexity import perplexity_by_bucket

    max_len = args.ppl_max_len or max(args.niah_lengths)
    docs = heldout_token_docs(tokenizer, args.ppl_docs, max_len, args.ppl_source, _heldout_fraction(args),
                              args.seed, progress=not args.no_progress)
    score_len = min(args.ppl_score_len or max_len, max_len)
    return perplexity_by_bucket(model, docs, score_len, progress=not args.no_progress)


def _copy(model, tokenizer, args) -> dict:
    from .copying import evaluate_copy
    from .documents import heldout_token_docs

    lengths = args.copy_lengths or args.niah_lengths
    docs = heldout_token_docs(tokenizer, args.copy_samples, max(lengths), args.ppl_source, _heldout_fraction(args),
                              args.seed, progress=not args.no_progress)
    return evaluate_copy(model, docs, lengths, args.copy_span, args.copy_samples, args.seed,
                         progress=not args.no_progress)


def _heldout_fraction(args) -> float:
    from .documents import DEFAULT_HELDOUT_FRACTION

    return args.ppl_heldout_fraction if args.ppl_heldout_fraction is not None else DEFAULT_HELDOUT_FRACTION


def _haystack_docs(args, tokenizer) -> list[str] | None:
    from .documents import heldout_documents, load_documents
    from .niah import get_task

    if not any(get_task(t).haystack == "documents" for t in args.tasks):
        return None
    if args.haystack_heldout:
        return heldout_documents(tokenizer, args.haystack, _heldout_fraction(args), args.seed,
                                 progress=not args.no_progress)
    return load_documents(args.haystack)


def _niah_cache(args) -> Path | None:
    from hypenet.teachers.load import cache_dir

    if args.niah_cache is None:
        return cache_dir() / "niah"
    return None if str(args.niah_cache).lower() == "none" else args.niah_cache


def _niah(model, tokenizer, args, lengths, haystack, timing: dict | None = None,
          answers: Path | None = None) -> list[dict]:
    """NIAH's per-sample records; `answers`: the file that keeps the answers as they come (`niah.AnswerLog`)."""
    from .niah import evaluate_niah

    phases: dict = {}
    records = evaluate_niah(model, tokenizer, args.tasks, lengths, args.niah_depths, args.niah_samples, args.seed,
                            haystack, args.chat_template, args.batch_size, args.max_batch_tokens,
                            progress=not args.no_progress, cache_dir=_niah_cache(args), timing=phases,
                            answers=answers, log=_log)
    if timing is not None:  # accumulated: YaRN runs one length at a time
        for name, seconds in phases.items():
            timing[name] = timing.get(name, 0.0) + seconds
    return records


def _niah_grid(tokenizer, args, haystack, samples_per_cell: int) -> list:
    """The NIAH options' grid with `samples_per_cell`, from the grid cache when it was built before."""
    from .niah import build_niah_grid

    return build_niah_grid(tokenizer, args.tasks, args.niah_lengths, args.niah_depths, samples_per_cell, args.seed,
                           haystack, args.chat_template, _niah_cache(args))


def _needle_attention(model, tokenizer, args, haystack, spec, footprint: dict) -> dict:
    """Where the attention layers look on the NIAH grid's prompts (`needle_attention`). With --yarn, a model with
    RoPE is measured at each length past its trained window reloaded with YaRN for exactly that length, as NIAH's
    YaRN run is (`yarn`: the window and each such length's factor)."""
    from .needle_attention import evaluate_needle_attention

    def measure(model, tokenizer, lengths: list[int]) -> dict:
        grid_args = argparse.Namespace(**{**vars(args), "niah_lengths": lengths})
        samples = _niah_grid(tokenizer, grid_args, haystack, args.needle_attention_samples)
        return evaluate_needle_attention(model, tokenizer, samples, progress=not args.no_progress)

    trained = args.trained_len or footprint["trained_context_length"]
    beyond = [n for n in args.niah_lengths if n > trained] if args.yarn and footprint["model_type"] != "hypenet" \
        else []
    within = [n for n in args.niah_lengths if n not in beyond]
    result = measure(model, tokenizer, within) if within else {"layers": [], "tasks": {}}
    factors: dict[str, float] = {}
    for part in _with_yarn(spec, args, trained, beyond, factors, lambda length, scaled, scaled_tokenizer:
                           measure(scaled, scaled_tokenizer, [length])):
        result["layers"] = result["layers"] or part["layers"]
        for task, by_length in part["tasks"].items():
            result["tasks"].setdefault(task, {}).update(by_length)
    if factors:
        result["yarn"] = {"trained_context_length": trained, "factors": factors}
    return result


def _niah_forced(model, tokenizer, args, haystack, out_dir: Path, timing: dict) -> dict:
    """The NIAH grid's answers scored with the answer given (`niah_forced`); per-sample rows to
    niah_forced_samples.jsonl, seconds spent building the grid and scoring to `timing`."""
    from .niah_forced import evaluate_forced, summarize_forced

    started = time.perf_counter()
    samples = _niah_grid(tokenizer, args, haystack, args.niah_samples)
    built = time.perf_counter()
    records = evaluate_forced(model, tokenizer, samples, progress=not args.no_progress, answer=args.forced_answer)
    timing.update(build_s=built - started, score_s=time.perf_counter() - built)
    _write_samples(out_dir / "niah_forced_samples.jsonl", records)
    return {"answer": args.forced_answer, **summarize_forced(records)}


def _niah_with_yarn(spec, args, haystack, results, answers: Path | None = None) -> list[dict]:
    """NIAH at each length beyond the trained window, the model reloaded with YaRN for exactly that length."""
    if results["footprint"]["model_type"] == "hypenet":
        _log("--yarn: a HypeNet model has no RoPE in attention to scale; its as-is results stand.")
        return []
    trained = args.trained_len or results["footprint"]["trained_context_length"]
    beyond = [length for length in args.niah_lengths if length > trained]
    if not beyond:
        _log(f"--yarn: every NIAH length is within the trained window ({trained}); nothing to scale.")
        return []
    records, factors = [], {}
    for part in _with_yarn(spec, args, trained, beyond, factors, lambda length, model, tokenizer: _niah(
            model, tokenizer, args, [length], haystack, _phases(results, "niah_yarn"), answers)):
        records += part
    results["yarn"] = {"trained_context_length": trained, "factors": factors}
    return records


def _with_yarn(spec, args, trained: int, lengths: list[int], factors: dict, work) -> list:
    """work(length, model, tokenizer) for each of `lengths`, the model loaded with YaRN stretching RoPE from `trained`
    to exactly that length and freed before the next is loaded; their results in order. Each length's factor goes into
    `factors`."""
    from .models import load_model_for_eval, yarn_rope_scaling

    results = []
    for length in lengths:
        scaling = yarn_rope_scaling(trained, length)
        factors[str(length)] = scaling["factor"]
        _log(f"YaRN factor {scaling['factor']:g} for {length} tokens (trained {trained})")
        model, tokenizer = load_model_for_eval(spec, args.device, args.dtype, rope_scaling=scaling)
        results.append(work(length, model, tokenizer))
        del model
        gc.collect()
    return results


def _write_niah(results: dict, name: str, records: list[dict], out_dir: Path) -> list[Path]:
    from .niah import summarize

    results[name] = summarize(records)
    _write_samples(out_dir / f"{name}_samples.jsonl", records)
    return _niah_heatmaps(results, name, out_dir)


def _write_samples(path: Path, records: list[dict]) -> None:
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def _niah_heatmaps(results: dict, name: str, out_dir: Path) -> list[Path]:
    """One accuracy heatmap (length x depth) per task of results[name] (niah or niah_yarn)."""
    from .plots import plot_niah_heatmap

    variant = " + YaRN" if name == "niah_yarn" else ""
    return [plot_niah_heatmap(task_result, out_dir / f"{name}_{task}.png", f"{results['label']}{variant}: NIAH {task}")
            for task, task_result in results[name]["tasks"].items()]


def model_label(spec: str) -> str:
    """The model's name in reports and in the default --out: a folder's or hub id's last part (`Qwen3-1.7B`), a file's
    name without its suffix, and for a converted model's `RUN/model` folder the conversion's name (RUN's). A local
    folder is named by where it is, as given from the working folder: `model` or `./model` in RUN, `..` in RUN/model/x
    and `.` in RUN/model are RUN too (not "model", or "" for `.`)."""
    from ..teachers.load import is_embedded

    if is_embedded(spec):
        return "teacher"
    path = Path(str(spec))
    if path.is_file():
        return path.stem
    if path.is_dir():  # (absolute, `..` taken out as written: a symlinked run keeps the name it was given by)
        path = Path(os.path.abspath(path))
    if path.name == "model" and path.parent.name not in ("", ".", ".."):  # hypenet convert's export folder
        return path.parent.name
    return path.name


def _check_out(out_dir: Path, spec: str, args) -> None:
    """An --out (compare: --out/LABEL) holding another model's evaluation is not written over unless --overwrite says
    so; the same model's is replaced."""
    if out_dir.exists() and not out_dir.is_dir():  # (before the model loads: it would fail only as it writes)
        raise InvalidInputError(f"--out {out_dir} is a file; pass a folder")
    earlier = out_dir / "results.json"
    if getattr(args, "overwrite", False):
        return
    if not earlier.is_file():
        if (out_dir / "report.md").is_file():  # `hypenet compare`'s --out: its report, the models' folders below it
            raise InvalidInputError(f"{out_dir} holds a report that is not one model's evaluation (a comparison?); "
                                    "pass another --out, or --overwrite to write over it")
        return
    try:
        model = json.loads(earlier.read_text()).get("model")
    except (ValueError, AttributeError):
        model = None
    from ..teachers.load import is_embedded

    same = model == str(spec) or (model is not None and is_embedded(model) and is_embedded(spec)) or (
        model and Path(model).exists() and Path(model).resolve() == Path(spec).resolve())
    if not same:
        raise InvalidInputError(f"{out_dir} holds the evaluation of {model or 'another model'}; pass another --out, "
                                "or --overwrite to replace it")


def run_eval(args) -> int:
    label = args.label or model_label(args.model)
    out_dir = args.out or Path("runs/eval") / label
    _check_out(out_dir, args.model, args)
    evaluate_model(args.model, args, out_dir, label)
    return 0


def _results_or_evaluate(spec: str, args, out_dir: Path, label: str) -> dict:
    path = Path(spec)
    if path.is_dir() and (path / "results.json").is_file():
        path = path / "results.json"
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    _check_out(out_dir, spec, args)
    return evaluate_model(spec, args, out_dir, label)


def run_compare(args) -> int:
    from .report import write_report

    specs = [args.teacher, *args.students]
    if args.labels is not None:
        labels = _names(args.labels)
    elif len(specs) == 2:
        labels = ["teacher", "student"]
    else:
        labels = ["teacher"] + [f"student{i}" for i in range(1, len(specs))]
    if len(labels) != len(specs) or len(set(labels)) != len(labels):
        raise InvalidInputError(f"--labels needs {len(specs)} different names, one per model; got {args.labels!r}.")
    runs = [(label, _results_or_evaluate(spec, args, args.out / label, label)) for spec, label in zip(specs, labels)]
    bench = json.loads(args.bench.read_text()) if args.bench else None
    write_report(runs, args.out, " vs ".join(labels), bench)
    _log(f"wrote {args.out}/report.md")
    return 0


def run_merge(args) -> int:
    from .merge import SAMPLED, MergeError, merge_evaluations
    from .report import write_report

    try:
        parts = [Path(p).resolve() for p in args.parts]
        if args.out.resolve() in [p if p.is_dir() else p.parent for p in parts]:
            raise MergeError(f"--out {args.out} is one of the parts; write the merged evaluation to a new folder.")
        results, records = merge_evaluations(args.parts, args.label)
    except MergeError as error:
        raise InvalidInputError(f"merge-evals: {error}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    heatmaps = []
    for name, rows in records.items():
        _write_samples(args.out / SAMPLED[name], rows)
        if name != "niah_forced":
            heatmaps += _niah_heatmaps(results, name, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    write_report([(results["label"], results)], args.out, f"Evaluation of {results['label']}",
                 extra_figures=heatmaps)
    _log(f"merged {len(args.parts)} evaluations into {args.out}/results.json and report.md")
    return 0
