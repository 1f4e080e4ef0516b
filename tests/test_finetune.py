"""Fine-tuning a HypeNet with the Hugging Face stack, as a user does after a conversion: transformers' Trainer over
padded batches with gradient accumulation and activation (gradient) checkpointing takes the step of one whole
batch, and LoRA (peft) trains only its adapters, reloads and merges to the same logits."""

import pytest
import torch
from test_model import tiny_hypenet
from transformers import Trainer, TrainingArguments

peft = pytest.importorskip("peft", reason="peft is in the test extras: pip install -e '.[test]'")

LENGTHS = (5, 23, 9, 17)  # unequal, so that a mean per micro batch is not the batch's mean over tokens


def padded_examples(vocab_size: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, vocab_size, (n,), generator=generator)} for n in LENGTHS]


def collate(examples: list[dict]) -> dict:
    """Right-padded batch; padded positions are masked and their labels ignored (-100)."""
    width = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": torch.zeros(len(examples), width, dtype=torch.long),
             "attention_mask": torch.zeros(len(examples), width, dtype=torch.long)}
    for row, e in enumerate(examples):
        batch["input_ids"][row, :len(e["input_ids"])] = e["input_ids"]
        batch["attention_mask"][row, :len(e["input_ids"])] = 1
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


def trainer_step(model, tmp_path, **options) -> None:
    """One SGD step of lr 1 (the weights move by minus the gradient) over the four examples."""
    args = TrainingArguments(str(tmp_path), optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
                             weight_decay=0.0, max_grad_norm=0.0, max_steps=1, report_to=[], save_strategy="no",
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0, **options)
    Trainer(model=model, args=args, train_dataset=padded_examples(model.config.vocab_size),
            data_collator=collate).train()


def whole_batch_gradient(model) -> dict[str, torch.Tensor]:
    """The gradient of the mean cross-entropy over every labelled token of the four examples, in one forward."""
    model.zero_grad()
    model.train()
    model(**collate(padded_examples(model.config.vocab_size))).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("options", [
    dict(per_device_train_batch_size=2, gradient_accumulation_steps=2),
    dict(per_device_train_batch_size=1, gradient_accumulation_steps=4, activation_checkpointing=True),
], ids=["accumulate-2", "accumulate-4-checkpointed"])
def test_trainer_step_is_the_whole_batch_step(tmp_path, options):
    model = tiny_hypenet()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    gradient = whole_batch_gradient(tiny_hypenet())
    trainer_step(model, tmp_path, **options)
    for name, p in model.named_parameters():
        torch.testing.assert_close(before[name] - p.detach(), gradient[name], rtol=1e-4, atol=1e-6, msg=name)


def test_lora_trains_adapters_only_and_reloads_and_merges(tmp_path):
    base = tiny_hypenet()
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "g_proj"]  # in attention and lightning layers alike
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=
                                                      "gaussian", task_type="CAUSAL_LM"))
    adapters = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in name for name in adapters)
    trainer_step(model, tmp_path / "train", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                 activation_checkpointing=True)
    for name, p in model.named_parameters():
        if name in adapters:
            continue
        plain = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p, frozen[plain]), name  # the converted model's own weights stay as they were
    assert any(not torch.equal(p, adapters[name]) for name, p in model.named_parameters() if name in adapters)

    model.save_pretrained(tmp_path / "lora")
    model.eval()
    batch = collate(padded_examples(base.config.vocab_size))
    del batch["labels"]
    with torch.no_grad():
        trained = model(**batch).logits
        reloaded = peft.PeftModel.from_pretrained(tiny_hypenet(), tmp_path / "lora").eval()
        torch.testing.assert_close(reloaded(**batch).logits, trained, rtol=0, atol=0)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, trained, rtol=1e-4, atol=1e-5)
