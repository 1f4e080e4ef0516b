"""Teachers: loading pretrained Transformers and transferring their weights into HypeNet."""

from .load import EMBEDDED_TEACHER, SUPPORTED_ARCHITECTURES, embedded_teacher_gguf, load_teacher, resolve_teacher
from .transfer import (
    attention_from_teacher,
    build_hypenet_from_teacher,
    copy_attention_weights,
    hypenet_config_from_teacher,
    lightning_from_teacher,
    teacher_attention,
)

__all__ = [
    "EMBEDDED_TEACHER",
    "SUPPORTED_ARCHITECTURES",
    "attention_from_teacher",
    "build_hypenet_from_teacher",
    "copy_attention_weights",
    "embedded_teacher_gguf",
    "hypenet_config_from_teacher",
    "lightning_from_teacher",
    "load_teacher",
    "resolve_teacher",
    "teacher_attention",
]
