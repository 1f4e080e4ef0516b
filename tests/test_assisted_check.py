"""scripts/assisted_check.py: prompt-lookup decoding against greedy on a copying prompt."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import load_script
from test_model import tiny_hypenet  # noqa: E402

assisted_check = load_script("assisted_check")


def test_copy_prompt_repeats_the_start_and_expects_what_follows_it():
    doc = np.arange(100, 140)
    [(prompt, expected)] = assisted_check.copy_prompts([doc], length=30, cue=4, new=5)
    assert prompt.tolist() == [list(range(100, 130)) + [100, 101, 102, 103]]
    assert expected == [104, 105, 106, 107, 108]


def test_copied_prefix_counts_up_to_the_first_miss():
    assert assisted_check.copied_prefix([1, 2, 3, 9, 5], [1, 2, 3, 4, 5]) == 3
    assert assisted_check.copied_prefix([7], [1, 2]) == 0
    assert assisted_check.copied_prefix([1, 2], [1, 2]) == 2


def test_timed_generate_gives_the_new_tokens_and_lookup_gives_the_same():
    model = tiny_hypenet()
    prompt = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]])
    greedy, seconds = assisted_check.timed_generate(model, prompt, 7)
    assert len(greedy) == 7 and seconds > 0
    full = model.generate(prompt, max_new_tokens=7, do_sample=False, pad_token_id=0)[0, 12:].tolist()
    assert greedy == full
    assert assisted_check.timed_generate(model, prompt, 7, prompt_lookup_num_tokens=3)[0] == greedy


def test_source_option_reaches_the_held_out_documents(monkeypatch, tmp_path):
    """--source names the corpus the prompts come from (the device machine has the corpus file, not the built-in
    corpus installed); without it the built-in corpus is read."""
    sources = []

    def docs(tokenizer, n_docs, max_len, source="builtin", **_):
        sources.append(source)
        return [np.arange(10, 10 + max_len) for _ in range(n_docs)]

    monkeypatch.setattr(assisted_check, "load_model_for_eval", lambda spec, device, dtype: (tiny_hypenet(), None))
    monkeypatch.setattr(assisted_check, "heldout_token_docs", docs)
    common = ["tiny", "--length", "24", "--cue", "4", "--new", "3", "--docs", "1", "--lookup", "2"]
    assert assisted_check.main(common + ["--source", "corpus.jsonl.xz", "--out", str(tmp_path / "a.json")]) == 0
    assert assisted_check.main(common) == 0
    assert sources == ["corpus.jsonl.xz", "builtin"]
    assert (tmp_path / "a.json").exists()


def test_parting_scores_the_first_token_that_differs():
    """Where greedy and prompt lookup part, the logits there come from one forward pass over the prompt and greedy's
    tokens before it: greedy's token is their largest, so it leads the other by at least the top-2 margin's sign."""
    model = tiny_hypenet()
    prompt = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]])
    greedy, _ = assisted_check.timed_generate(model, prompt, 6)
    assert assisted_check.parting(model, prompt, greedy, list(greedy)) is None
    other = list(greedy)
    other[3] = (greedy[3] + 1) % model.config.vocab_size
    parted = assisted_check.parting(model, prompt, greedy, other)
    with torch.no_grad():
        logits = model(torch.cat([prompt[0], torch.tensor(greedy[:3])])[None]).logits[0, -1]
    top = logits.topk(2).values
    assert parted["at"] == 3
    assert parted["margin"] == pytest.approx(float(top[0] - top[1]), abs=1e-5)
    assert parted["greedy_minus_lookup"] == pytest.approx(float(logits[greedy[3]] - logits[other[3]]), abs=1e-5)
    assert parted["greedy_minus_lookup"] >= parted["margin"] - 1e-5  # greedy's token is the argmax there
