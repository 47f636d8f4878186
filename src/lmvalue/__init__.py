"""lmvalue: pretrain on your unlabeled text, transfer to your task, and measure what it was worth."""

__version__ = "0.2.0"
