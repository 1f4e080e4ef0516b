"""lm-evaluation-harness on an already loaded model (teacher, HypeNet checkpoint or GGUF) through its HF adapter.

Batches above 1 are fine: padded batches give the same log-likelihoods as single sequences (HypeNet masks
padding in its recurrent layers as well as in attention).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from ..errors import InvalidInputError, MissingInputError, first_line

LM_EVAL_MISSING = (
    "lm-evaluation-harness is not installed: run `pip install 'hypenet[eval]'` (or `pip install lm-eval`) "
    "to use --lm-eval."
)


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError(LM_EVAL_MISSING) from error
    return lm_eval, HFLM, TaskManager


@functools.lru_cache(maxsize=4)
def _task_manager(paths: tuple[str, ...]):
    """lm-eval's index of its tasks and those in `paths` (building it reads every task's YAML: seconds; kept)."""
    _, _, TaskManager = _import_lm_eval()
    return TaskManager(include_path=list(paths) or None)


def _paths(include_path: str | Path | Sequence[str | Path] | None) -> tuple[str, ...]:
    return tuple(str(p) for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path or []))


def check_tasks(tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None,
                include_option: str = "--lm-eval-include-path"):
    """lm-eval's task index for `tasks` (with the folders of `include_path`), once every task name is known to it;
    InvalidInputError naming the unknown ones otherwise (`include_option`: the setting that gives a folder of task
    YAML files, as the caller's user spells it)."""
    manager = _task_manager(_paths(include_path))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise InvalidInputError(f"lm-eval does not know task(s) {unknown}; check the names (`lm-eval ls tasks`) or "
                                f"pass the folder with their YAML files as {include_option}.")
    return manager


def _fetch_failed(tasks: Sequence[str], error: BaseException, include_option: str) -> MissingInputError:
    return MissingInputError(
        f"lm-eval could not fetch the dataset of {', '.join(tasks)} ({first_line(error)}). Run once where the hub "
        "can be reached (the datasets cache keeps it; then HF_HUB_OFFLINE=1 works), or use tasks whose data is "
        f"local ({include_option}, docs/EVAL.md)")


def fetch_task_data(tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None,
                    include_option: str = "--lm-eval-include-path") -> None:
    """Check `tasks` (`check_tasks`) and load their datasets now (into the datasets cache, where a later evaluation
    finds them), so that a run that scores them later fails at its start, not hours in, when one cannot be had:
    MissingInputError (e.g. offline and not cached)."""
    lm_eval, _, _ = _import_lm_eval()
    manager = check_tasks(tasks, include_path, include_option)
    try:
        lm_eval.tasks.get_task_dict(list(tasks), manager)
    except ConnectionError as error:  # (huggingface_hub's OfflineModeIsEnabled is one)
        raise _fetch_failed(tasks, error, include_option) from error


def hf_lm(model, tokenizer, batch_size: int = 8):
    """lm-eval's HF adapter (HFLM) around an already loaded model."""
    _, HFLM, _ = _import_lm_eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def score_tasks(lm, tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None,
                limit: int | float | None = None, num_fewshot: int | None = None, seed: int = 0,
                include_option: str = "--lm-eval-include-path") -> dict:
    """`tasks` scored by lm-eval on `lm` (`hf_lm`), as `run_lm_eval` returns them. Seeded (`seed` for every seed
    lm-eval takes), with no bootstrapped standard errors."""
    lm_eval, _, _ = _import_lm_eval()
    manager = check_tasks(tasks, include_path, include_option)
    try:
        output = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                         num_fewshot=num_fewshot, log_samples=False, bootstrap_iters=0,
                                         random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                         fewshot_random_seed=seed)
    except ConnectionError as error:  # (huggingface_hub's OfflineModeIsEnabled is one) a task's dataset is not cached
        raise _fetch_failed(tasks, error, include_option) from error
    counted = output.get("n-samples", {})
    return {task: {**_metrics(values), **({"samples": counted[task]["effective"]} if task in counted else {})}
            for task, values in output["results"].items()}


def run_lm_eval(model, tokenizer, tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None,
                batch_size: int = 8, limit: int | float | None = None, num_fewshot: int | None = None,
                seed: int = 0) -> dict:
    """Scores per task, {task: {metric: value}} (lm-eval's ",none" filter suffix dropped), with "samples": the
    documents it scored (fewer than the task's with `limit`)."""
    check_tasks(tasks, include_path)  # (before the adapter is built: a bad name is said at once)
    return score_tasks(hf_lm(model, tokenizer, batch_size), tasks, include_path, limit, num_fewshot, seed)


def _metrics(values: dict) -> dict:
    metrics = {}
    for name, value in values.items():
        if name in ("alias", "sample_len") or not isinstance(value, (int, float)):
            continue
        metric, _, filter_name = name.partition(",")
        metrics[metric if filter_name in ("", "none") else name] = value
    return metrics
