"""`compile: true` (halo/compiling.py): compiled decoder layers compute what eager ones do, and are restored after."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from transformers import Qwen3Config, Qwen3ForCausalLM

from hypenet.halo import compiling, engine, stage2, stage3
from hypenet.halo.config import Stage2Config
from hypenet.teachers import build_hypenet_from_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_distillation() -> stage2.Distillation:
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    teacher = Qwen3ForCausalLM(config).eval().requires_grad_(False)
    student = build_hypenet_from_teacher(teacher, ["lightning", "attention", "lightning"], lightning_layers=None)
    return stage2.Distillation(student.float(), teacher, logits_chunk=32)


def loss_and_grads(objective, input_ids):
    objective.zero_grad(set_to_none=True)
    loss = objective(input_ids)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend, tol", [("aot_eager", 0.0), ("inductor", 1e-4)])
def test_compiled_distillation_matches_eager_and_is_undone(backend, tol):
    objective = tiny_distillation()
    input_ids = torch.randint(0, 128, (2, 48))
    loss, grads = loss_and_grads(objective, input_ids)
    layers = compiling.layers_to_compile(objective)
    assert len(layers) == 7 and layers[-1] is objective.kl  # three student and three teacher layers, and the KL
    names = [n for n, _ in objective.named_parameters()]
    torch._dynamo.reset()  # (graphs of earlier tests would be reused, not counted)
    counters.clear()
    with compiling.compiled_layers(layers, backend=backend):
        assert all(layer._compiled_call_impl is not None for layer in layers)
        compiled_loss, compiled_grads = loss_and_grads(objective, input_ids)
    # one graph per kind of layer (student lightning, student attention, teacher) and the KL: nothing fell back
    assert counters["stats"]["unique_graphs"] == 4
    assert all(layer._compiled_call_impl is None for layer in layers)
    assert [n for n, _ in objective.named_parameters()] == names  # in place: checkpoints keep their names
    torch.testing.assert_close(compiled_loss, loss, rtol=tol, atol=tol)
    assert_grads_close(compiled_grads, grads, max(tol, 1e-6))


def assert_grads_close(got: dict, expected: dict, tol: float) -> None:
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert (got[name] - grad).abs().max() <= tol * grad.abs().max().clamp(min=1e-12), name


def test_stage3_compiles_the_parts_of_its_checkpointed_layers_around_the_kernel(monkeypatch):
    """On a GPU the lightning kernel call is a graph break. A compiled layer would trace its checkpoint, whose body
    cannot break, and dynamo would run the whole layer eagerly (what the GPU run showed); stage 3 compiles the
    parts of each layer inside the checkpoint instead. The break is forced here as on the GPU."""
    from hypenet.model import modeling_hypenet
    monkeypatch.setattr(modeling_hypenet, "lightning_attention",
                        torch.compiler.disable(modeling_hypenet.lightning_attention))
    model = tiny_distillation().student
    objective = stage3.LanguageModeling(model, logits_chunk=32, gradient_checkpointing=True)
    input_ids = torch.randint(0, 128, (2, 40))
    loss, grads = loss_and_grads(objective, input_ids)
    parts = compiling.layers_to_compile(objective)
    assert len(parts) == 4 * 3 + 1 and model.model.layers[0].mlp in parts and parts[-1] is objective.cross_entropy
    torch._dynamo.reset()
    counters.clear()
    with compiling.compiled_layers(parts, backend="aot_eager"):
        compiled_loss, compiled_grads = loss_and_grads(objective, input_ids)
    # norms, MLP, attention mixer, the lightning mixer before and after its kernel, and the cross-entropy at two
    # slice sizes (78 tokens: 32 + 32 + 14)
    assert counters["stats"]["unique_graphs"] == 7
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-6, atol=0.0)
    assert_grads_close(compiled_grads, grads, 1e-6)
    model.activation_checkpointing_disable()
    assert compiling.layers_to_compile(objective) == [*model.model.layers, objective.cross_entropy]


def test_the_engine_trains_the_same_with_compile_on(tmp_path, monkeypatch):
    from hypenet.data import PackedChunks
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    config = Stage2Config(tokens=3 * 4 * 32, seq_len=32, batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=1)
    token_ids = torch.randint(0, 128, (4000,)).numpy()
    losses = {}
    for compile_on in (False, True):
        objective = tiny_distillation()
        run = engine.RunSettings(checkpoint_every=100, cpu=True, compile=compile_on)
        result = engine.train("stage2", objective, config, PackedChunks(token_ids, 32, seed=0),
                              tmp_path / f"compile-{compile_on}", run)
        losses[compile_on] = result.losses
        assert all(layer._compiled_call_impl is None for layer in compiling.layers_to_compile(objective))
    assert len(losses[True]) == 3 and losses[True] == losses[False]
