"""Built-in data: algorithmic tasks (copy, reverse, addition) and a byte-level LM dataset."""

from .bytes_lm import ByteLMDataset, stdlib_sources
from .tasks import BOS, EOS, IGNORE, PAD, SEP, AdditionTask, CopyTask, ReverseTask, Task

__all__ = [
    "BOS",
    "EOS",
    "IGNORE",
    "PAD",
    "SEP",
    "AdditionTask",
    "ByteLMDataset",
    "CopyTask",
    "ReverseTask",
    "Task",
    "stdlib_sources",
]
