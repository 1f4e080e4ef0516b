"""lm-evaluation-harness on an already loaded model (teacher, HypeNet checkpoint or GGUF) through its HF adapter.

Batches above 1 are fine: padded batches give the same log-likelihoods as single sequences (HypeNet masks
padding in its recurrent layers as well as in attention).
"""

from __future__ import annotations

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


def run_lm_eval(model, tokenizer, tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None,
                batch_size: int = 8, limit: int | float | None = None, num_fewshot: int | None = None,
                seed: int = 0) -> dict:
    """Scores per task, {task: {metric: value}} (lm-eval's ",none" filter suffix dropped), with "samples": the
    documents it scored (fewer than the task's with `limit`)."""
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    paths = [str(p) for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path or [])]
    task_manager = TaskManager(include_path=paths or None)
    unknown = [t for t in tasks if t not in task_manager.all_tasks]
    if unknown:
        raise InvalidInputError(f"lm-eval does not know task(s) {unknown}; check the names (`lm-eval ls tasks`) or "
                                "pass the folder with their YAML files as --lm-eval-include-path.")
    try:
        output = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=task_manager, limit=limit,
                                         num_fewshot=num_fewshot, log_samples=False, bootstrap_iters=0,
                                         random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                         fewshot_random_seed=seed)
    except ConnectionError as error:  # (huggingface_hub's OfflineModeIsEnabled is one) a task's dataset is not cached
        raise MissingInputError(
            f"lm-eval could not fetch the dataset of {', '.join(tasks)} ({first_line(error)}). Run once where the hub "
            "can be reached (the datasets cache keeps it; then HF_HUB_OFFLINE=1 works), or use tasks whose data is "
            "local (--lm-eval-include-path, docs/EVAL.md)") from error
    counted = output.get("n-samples", {})
    return {task: {**_metrics(values), **({"samples": counted[task]["effective"]} if task in counted else {})}
            for task, values in output["results"].items()}


def _metrics(values: dict) -> dict:
    metrics = {}
    for name, value in values.items():
        if name in ("alias", "sample_len") or not isinstance(value, (int, float)):
            continue
        metric, _, filter_name = name.partition(",")
        metrics[metric if filter_name in ("", "none") else name] = value
    return metrics
