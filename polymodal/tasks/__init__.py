"""Tasks: the head, the loss, target encoding, and metrics for each problem type (`Task`, tasks/base.py); generated
text is its subclass `TextTask` (tasks/text.py, with its decoders, beam search and metrics beside it)."""

from polymodal.tasks.base import Task, label_sets, split_labels
from polymodal.tasks.text import TextTask

__all__ = ["Task", "TextTask", "label_sets", "split_labels"]
