"""Tiny tokenizer and random Llama shared by the eval tests (imported by the other tests/test_eval_*.py files)."""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hypenet.eval.models import prepare_tokenizer
from hypenet.eval.niah import FILLER, NIAH_TASKS, SINGLE_TASKS, needle_sentence, question_and_answer_prefix

HAYSTACK_DOCS = [
    "Rivers carve valleys over thousands of years. Their water carries sand and stone to the sea! "
    "Some rivers freeze in winter, and others dry up in summer. Fish swim upstream to lay their eggs.",
    "A library keeps books, maps and old newspapers. Readers borrow books for a few weeks? "
    "The oldest libraries copied every book by hand. Today many libraries lend e-books as well.",
    "Bees visit flowers to collect nectar and pollen. A hive can hold tens of thousands of bees. "
    "The queen lays the eggs while workers build the comb. Honey is nectar that the bees have dried.",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes and decodes back) trained in milliseconds on the eval vocabulary."""
    texts = [FILLER, *HAYSTACK_DOCS, "0123456789 abcdef-"]
    for task in (NIAH_TASKS[name] for name in SINGLE_TASKS):
        texts += [needle_sentence(task, "amber-anchor", "1234567"), *question_and_answer_prefix(task, "amber-anchor")]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")
    return prepare_tokenizer(tokenizer)


def tiny_llama(tokenizer, seed: int = 0, max_position_embeddings: int = 4096) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def test_tiny_tokenizer_round_trips_any_text():
    tokenizer = tiny_tokenizer()
    text = "One of the special magic uuids for zesty-quokka is: 3f2a9c1e-0b7d-4e5f-8a6b-9c0d1e2f3a4b. Ünïcode!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def tiny_hypenet(tokenizer, seed: int = 0):
    """A random HypeNet: one attention layer among Lightning layers, HyPE logit scaling on."""
    from hypenet import HypeNetConfig, HypeNetForCausalLM

    torch.manual_seed(seed)
    config = HypeNetConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2,
                           mixer_types=["lightning", "attention", "lightning", "lightning"], lightning_chunk_size=16,
                           attention_logit_scaling_base=500.0, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    return HypeNetForCausalLM(config).eval()
