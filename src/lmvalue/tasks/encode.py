"""Examples -> token ids and label ids; padded batches for training; batched inference.

Tagging labels are word-level and the model sees sub-word pieces: each word's label goes on its
*first* piece and every other position (later pieces, special tokens, padding) gets -100, which
the loss ignores. :func:`word_predictions` reads the predictions back at the same first pieces, so
``encode`` then ``word_predictions`` is the identity on the tags of every word that has a piece.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lmvalue.data.packing import batch_generator
from lmvalue.tasks import TaskSpec

IGNORE = -100


def encode(examples: list[dict], spec: TaskSpec, tokenizer, max_length: int, *, with_labels: bool = True):
    """Tokenize examples (truncating to ``max_length`` tokens).

    Returns:
        one dict per example: ``input_ids`` (int64 array), ``token_type_ids`` (when the tokenizer
        makes them), ``labels`` (an int, or an int array aligned to the pieces for tagging), and
        for tagging ``word_ids`` (the word of every piece, -1 for none) and ``n_words``.
    """
    label_id = {label: i for i, label in enumerate(spec.labels)}
    out = []
    step = 1000
    for start in range(0, len(examples), step):
        chunk = examples[start : start + step]
        if spec.level == "token":
            enc = tokenizer(
                [list(ex["tokens"]) for ex in chunk],
                is_split_into_words=True,
                truncation=True,
                max_length=max_length,
            )
        elif spec.kind == "pair":
            enc = tokenizer(
                [ex["text"] for ex in chunk],
                [ex.get("text_pair") or "" for ex in chunk],
                truncation=True,
                max_length=max_length,
            )
        else:
            enc = tokenizer([ex["text"] for ex in chunk], truncation=True, max_length=max_length)
        for j, ex in enumerate(chunk):
            item = {"input_ids": np.asarray(enc["input_ids"][j], dtype=np.int64)}
            if "token_type_ids" in enc:
                item["token_type_ids"] = np.asarray(enc["token_type_ids"][j], dtype=np.int64)
            if spec.level == "token":
                word_ids = np.asarray([-1 if w is None else w for w in enc.word_ids(j)], dtype=np.int64)
                item["word_ids"] = word_ids
                item["n_words"] = len(ex["tokens"])
                if with_labels:
                    item["labels"] = align_labels([label_id.get(t, IGNORE) for t in ex["tags"]], word_ids)
            elif with_labels:
                item["labels"] = label_id.get(ex["label"], IGNORE)
                if ex.get("probs") is not None:  # a teacher's distribution (soft pseudo-label)
                    item["soft"] = np.asarray(ex["probs"], dtype=np.float32)
            out.append(item)
    return out


def align_labels(word_labels: list[int], word_ids: np.ndarray) -> np.ndarray:
    """Word-level label ids -> piece-level: the label on each word's first piece, -100 elsewhere."""
    labels = np.full(len(word_ids), IGNORE, dtype=np.int64)
    previous = -1
    for pos, w in enumerate(word_ids):
        if w >= 0 and w != previous:
            labels[pos] = word_labels[w]
        previous = w
    return labels


def first_pieces(word_ids: np.ndarray) -> dict[int, int]:
    """word index -> position of its first piece (words without a piece are absent)."""
    firsts: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w >= 0 and w not in firsts:
            firsts[int(w)] = pos
    return firsts


def collate(items: list[dict], pad_id: int) -> dict:
    """Pad to the longest item of this batch only."""
    longest = max(len(it["input_ids"]) for it in items)
    n = len(items)
    input_ids = torch.full((n, longest), pad_id, dtype=torch.long)
    attention = torch.zeros((n, longest), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if "token_type_ids" in items[0]:
        batch["token_type_ids"] = torch.zeros((n, longest), dtype=torch.long)
    token_level = "labels" in items[0] and np.ndim(items[0]["labels"]) == 1
    if "labels" in items[0]:
        batch["labels"] = (
            torch.full((n, longest), IGNORE, dtype=torch.long)
            if token_level
            else torch.zeros(n, dtype=torch.long)
        )
    if not token_level and any("soft" in it for it in items):
        # soft targets for the whole batch: a teacher's distribution, or one-hot for a gold label
        n_classes = next(len(it["soft"]) for it in items if "soft" in it)
        batch["soft_targets"] = torch.zeros((n, n_classes), dtype=torch.float32)
        for i, it in enumerate(items):
            if "soft" in it:
                batch["soft_targets"][i] = torch.from_numpy(it["soft"])
            else:
                batch["soft_targets"][i, int(it["labels"])] = 1.0
    for i, it in enumerate(items):
        L = len(it["input_ids"])
        input_ids[i, :L] = torch.from_numpy(it["input_ids"])
        attention[i, :L] = 1
        if "token_type_ids" in batch:
            batch["token_type_ids"][i, :L] = torch.from_numpy(it["token_type_ids"])
        if token_level:
            batch["labels"][i, :L] = torch.from_numpy(it["labels"])
        elif "labels" in batch:
            batch["labels"][i] = int(it["labels"])
    return batch


class LabeledBatches(torch.utils.data.Dataset):
    """Padded batches of labeled examples for one epoch and one process; item ``i`` is batch ``i``.

    A pure function of (seed, epoch, i, rank): the epoch's order is one seeded permutation, and
    each process takes its own rows of every global batch of ``batch_size × world`` examples. With
    one process the last batch may be smaller (no example is dropped); with several, a last
    partial global batch is dropped so that every process gets a full one.
    """

    def __init__(
        self,
        items: list[dict],
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        pad_id: int,
        rank=0,
        world=1,
        group_by_length: int = 0,
    ):
        self.items, self.batch_size, self.pad_id = items, batch_size, pad_id
        self.rank, self.world = rank, world
        g = batch_generator(seed, epoch, 7)
        self.order = torch.randperm(len(items), generator=g).numpy()
        per_step = batch_size * world
        self.n_batches = math.ceil(len(items) / per_step) if world == 1 else len(items) // per_step
        if group_by_length > 1 and self.n_batches > 1:
            self.order = _length_grouped(self.order, items, per_step, group_by_length, g)

    def __len__(self) -> int:
        return self.n_batches

    def indices(self, i: int) -> np.ndarray:
        start = (i * self.world + self.rank) * self.batch_size
        return self.order[start : start + self.batch_size]

    def __getitem__(self, i: int) -> dict:
        return collate([self.items[j] for j in self.indices(i)], self.pad_id)


def _length_grouped(order: np.ndarray, items: list[dict], per_step: int, group: int, g) -> np.ndarray:
    """``order`` regrouped so that each global batch holds examples of similar length: the shuffled
    order is cut into windows of ``group`` global batches, each window is sorted by length (longest
    first) and cut into batches, and the batches are shuffled. Padding shrinks to within a batch of
    neighbours in length; which examples share an epoch and their randomness stay seeded."""
    lengths = np.array([len(items[i]["input_ids"]) for i in order])
    window = per_step * group
    batches = []
    for start in range(0, len(order), window):
        idx = np.arange(start, min(start + window, len(order)))
        idx = idx[np.argsort(-lengths[idx], kind="stable")]
        batches += [idx[b : b + per_step] for b in range(0, len(idx), per_step)]
    # a short remainder batch (one process) stays last, as without grouping
    full = [b for b in batches if len(b) == per_step]
    rest = [b for b in batches if len(b) < per_step]
    perm = torch.randperm(len(full), generator=g).numpy()
    return order[np.concatenate([full[i] for i in perm] + rest)]


def length_sorted_batches(items: list[dict], batch_size: int) -> list[np.ndarray]:
    """Indices grouped by length (longest first), so padding stays within similar lengths."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i]["input_ids"]))
    return [np.asarray(order[s : s + batch_size]) for s in range(0, len(order), batch_size)]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of −Σ_c target_c · log softmax(logits)_c: the cross-entropy against a
    teacher's distribution (equal to the usual loss for a one-hot target)."""
    return -(targets * torch.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@torch.inference_mode()
def predict_logits(model, items: list[dict], pad_id: int, *, batch_size: int = 64, device=None) -> list:
    """Logits of every item, in the items' order: (C,) per example, or (pieces, C) for tagging.

    Batches are length-sorted and padded only to their own longest item. The model is put in
    eval mode and back in the mode it was in.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    out: list = [None] * len(items)
    try:
        for idx in length_sorted_batches(items, batch_size):
            batch = collate([items[i] for i in idx], pad_id)
            logits = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits.float().cpu()
            if logits.ndim == 3:  # (B, T', C); prompt tuning prepends virtual tokens: keep the last T
                logits = logits[:, -batch["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                n = len(items[i]["input_ids"])
                out[i] = logits[row, :n].numpy() if logits.ndim == 3 else logits[row].numpy()
    finally:
        model.train(was_training)
    return out


def word_predictions(piece_values: np.ndarray, word_ids: np.ndarray, n_words: int) -> list:
    """Per word: the value at its first piece, or None when the word has no piece (truncated, or
    a character the tokenizer drops)."""
    firsts = first_pieces(word_ids)
    return [piece_values[firsts[w]] if w in firsts else None for w in range(n_words)]
