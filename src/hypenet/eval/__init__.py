"""Evaluation of teachers and HypeNet students (docs/EVAL.md).

models      load any causal LM (HF dir, GGUF, the embedded teacher), YaRN, parameter and cache sizes
niah        RULER NIAH-Single-1/2/3: prompt builder, batched greedy runner, scoring, summaries
perplexity  perplexity per context-length bucket on held-out documents
documents   real text from hypenet.data: haystacks and the held-out split
lm_eval_adapter  lm-evaluation-harness on a loaded model (optional dependency lm-eval)
plots, report    heatmaps and line plots; markdown reports, teacher vs student
cli         `hypenet eval` and `hypenet compare`
"""
