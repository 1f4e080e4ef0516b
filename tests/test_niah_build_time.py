"""scripts/niah_build_time.py: the NIAH grid timed per number of threads, on a tiny saved model's tokenizer."""


import pytest
from conftest import load_script
from test_eval_cli import write_source
from test_eval_tiny import tiny_llama, tiny_tokenizer

build_time = load_script("niah_build_time")


def test_times_each_number_of_threads_and_checks_the_grids_match(tmp_path, capsys, monkeypatch):
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer, max_position_embeddings=256).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    args = [str(tmp_path / "model"), "--tasks", "single_1,single_2", "--niah-lengths", "200,300", "--niah-samples",
            "2", "--haystack", str(write_source(tmp_path)), "--workers", "1,3", "--no-progress"]
    build_time.main(args)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and all(row.endswith("| 40 |") for row in rows)  # 2 tasks x 2 lengths x 5 depths x 2
    assert out.rstrip().endswith("the same prompts for every number of threads")

    # grids that differ are reported, not passed over
    import hypenet.eval.niah as niah

    build = niah.build_niah_grid
    monkeypatch.setattr(niah, "build_niah_grid", lambda *a, workers, **k: build(*a, workers=workers, **k)[workers:])
    with pytest.raises(SystemExit, match="the grids differ"):
        build_time.main(args)
