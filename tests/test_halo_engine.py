"""The training engine's stop on a signal: the step in flight finishes, is checkpointed, and a resumed run continues
exactly where the stopped one was. Its deterministic mode: on while training, off again after."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from hypenet.data import PackedChunks
from hypenet.halo import engine
from hypenet.halo.config import HaloError, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = TrainConfig(tokens=6 * 4 * 16, seq_len=16, batch_size=4, micro_batch_size=2, lr=1e-2, warmup_steps=1)


class NextTokenBigram(nn.Module):
    """A tiny objective: next-token cross-entropy of an embedding + linear bigram model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(32, 8), nn.Linear(8, 32)

    def forward(self, input_ids):
        logits = self.head(self.embed(input_ids[:, :-1]))
        return nn.functional.cross_entropy(logits.reshape(-1, 32), input_ids[:, 1:].reshape(-1))


def chunks() -> PackedChunks:
    return PackedChunks(np.random.default_rng(0).integers(0, 32, 2000), CONFIG.seq_len, seed=0)


def signal_at(step_to_signal: int, times: int = 1):
    def after_step(step: int) -> None:
        if step == step_to_signal:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
    return after_step


def train(stage_dir, **settings) -> engine.TrainResult:
    run = engine.RunSettings(checkpoint_every=100, cpu=True, **settings)
    return engine.train("stage", NextTokenBigram(), CONFIG, chunks(), stage_dir, run)


def test_a_signal_checkpoints_the_finished_step_and_resume_continues_exactly(tmp_path):
    reference = train(tmp_path / "reference")
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "stopped", after_step=signal_at(3))
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert [p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir()] == ["step-00000003"]
    resumed = train(tmp_path / "stopped", resume=True)
    assert resumed.resumed_from == 3 and resumed.losses == reference.losses
    for name, weight in reference.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[name], weight, rtol=0, atol=0)
    records = [json.loads(line) for line in (tmp_path / "stopped" / engine.LOSS_LOG).read_text().splitlines()]
    assert [r.get("step") for r in records] == [1, 2, 3, 3, 4, 5, 6]  # the resume event sits at step 3


def test_a_signal_at_the_last_step_still_stops_and_resume_returns_the_result(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, after_step=signal_at(6))
    resumed = train(tmp_path, resume=True)
    assert resumed.resumed_from == 6 and len(resumed.losses) == 6 and resumed.state_dict is not None


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, after_step=signal_at(2, times=2))
    assert not (tmp_path / "checkpoints").exists()
    assert signal.getsignal(signal.SIGINT) is handler


class RecordsDeterminism(NextTokenBigram):
    """The bigram objective, noting whether PyTorch's deterministic algorithms are on at each forward."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, input_ids):
        self.seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic))
        return super().forward(input_ids)


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_training_is_on_for_the_stage_only_and_learns_the_same_on_the_cpu(tmp_path, deterministic):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    assert before == (False, False)
    objective = RecordsDeterminism()
    run = engine.RunSettings(checkpoint_every=100, cpu=True, deterministic=deterministic)
    result = engine.train("stage", objective, CONFIG, chunks(), tmp_path / "run", run)
    assert set(objective.seen) == {(deterministic, deterministic)}
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before
    assert result.losses == train(tmp_path / "reference").losses  # the CPU kernels are deterministic either way


def test_deterministic_mode_sets_the_cublas_workspace_and_restores_the_rest_after_an_error(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with pytest.raises(ValueError, match="inside"):
        with engine.deterministic_algorithms(True):
            assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == engine.CUBLAS_WORKSPACE
            raise ValueError("inside")
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting is kept
    with engine.deterministic_algorithms(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_an_op_without_a_deterministic_implementation_stops_with_a_hint():
    # PyTorch's own words (at::globalContext().alertNotDeterministic); no CPU op raises them
    words = ("index_add_cuda_ does not have a deterministic implementation, but you set "
             "'torch.use_deterministic_algorithms(True)'.")
    with pytest.raises(HaloError, match=r"stage2: deterministic is on.*index_add_cuda_.*drop --set deterministic=true"):
        with engine.deterministic_algorithms(True, "stage2"):
            raise RuntimeError(words)
    with pytest.raises(RuntimeError, match="other"):  # any other error passes unchanged
        with engine.deterministic_algorithms(True, "stage2"):
            raise RuntimeError("other")
    assert not torch.are_deterministic_algorithms_enabled()
