"""Tokenize a corpus once, pack it into fixed-length blocks, and serve deterministic batches.

Blocks have no padding: documents are concatenated, each followed by a separator (``[SEP]`` for
encoders, the end-of-text token for decoders), and cut into blocks of ``block_size`` tokens;
encoder blocks start with ``[CLS]``. The last partial block is dropped.

Batches are served by :class:`BlockBatches`, a dataset whose item ``i`` is the whole batch ``i``
of an epoch for one process. It is a pure function of (seed, epoch, i, rank), so data loader
workers can build and mask batches in parallel, and a resumed run starts at batch ``i`` without
reading the batches before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from lmvalue.errors import DataError


def split_documents(n_docs: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of document indices into (train, held-out); held-out has at least one doc."""
    if n_docs < 2:
        raise DataError(
            f"the corpus has {n_docs} document(s); at least 2 are needed to hold one out for evaluation"
        )
    order = np.random.default_rng(seed).permutation(n_docs)
    n_eval = min(max(1, round(n_docs * eval_fraction)), n_docs - 1)
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def pack_blocks(
    ids: np.ndarray,
    offsets: np.ndarray,
    docs: np.ndarray,
    block_size: int,
    *,
    sep_id: int,
    cls_id: int | None = None,
) -> np.ndarray:
    """Concatenate ``docs`` (each followed by ``sep_id``) and cut into blocks.

    The same call packs a token annotation parallel to ``ids`` (e.g. ``word_start``, with the
    values the annotation takes at separators as ``sep_id`` / ``cls_id``) into blocks aligned
    with the token blocks.

    Returns:
        array (n_blocks, block_size) of ``ids``'s dtype; each row starts with ``cls_id`` when given.
    """
    pieces = []
    sep = np.array([sep_id], dtype=ids.dtype)
    for d in docs:
        pieces.append(ids[offsets[d] : offsets[d + 1]])
        pieces.append(sep)
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=ids.dtype)
    body = block_size - (1 if cls_id is not None else 0)
    n_blocks = len(stream) // body
    blocks = stream[: n_blocks * body].reshape(n_blocks, body)
    if cls_id is not None:
        blocks = np.concatenate([np.full((n_blocks, 1), cls_id, dtype=ids.dtype), blocks], axis=1)
    return np.ascontiguousarray(blocks)


def batch_generator(seed: int, *keys: int) -> torch.Generator:
    """A torch generator seeded from (seed, *keys) through numpy's SeedSequence (no collisions)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class BlockBatches(torch.utils.data.Dataset):
    """Batches of one epoch for one process; item ``i`` is the complete (prepared) batch ``i``.

    Args:
        blocks: (n_blocks, block_size) token ids (a numpy array or memmap).
        batch_size: sequences per batch per process.
        prepare: the objective's ``prepare(batch, generator)``, e.g. masking.
        rank, world: this process and the number of processes; each takes its own rows of every
            global batch of ``batch_size * world`` blocks, so processes see different data.
        fields: more arrays with one row per block (e.g. ``word_start`` (n_blocks, block_size),
            ``pair_labels`` (n_blocks,)); batch ``i`` holds their rows of the same blocks.
    """

    def __init__(
        self,
        blocks: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        prepare: Callable[[dict, torch.Generator], dict],
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        fields: dict[str, np.ndarray] | None = None,
    ):
        self.blocks = blocks
        self.fields = fields or {}
        self.batch_size = batch_size
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.prepare = prepare
        n = len(blocks)
        self.order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        self.n_batches = n // (batch_size * world)

    def __len__(self) -> int:
        return self.n_batches

    def indices(self, i: int) -> np.ndarray:
        start = (i * self.world + self.rank) * self.batch_size
        return self.order[start : start + self.batch_size]

    def __getitem__(self, i: int) -> dict:
        idx = self.indices(i)
        batch = {"input_ids": torch.from_numpy(np.asarray(self.blocks[np.sort(idx)], dtype=np.int64))}
        for name, values in self.fields.items():
            batch[name] = torch.from_numpy(np.asarray(values[np.sort(idx)], dtype=np.int64))
        batch = self.prepare(batch, batch_generator(self.seed, self.epoch, i, self.rank))
        batch["block_index"] = torch.from_numpy(np.sort(idx).astype(np.int64))
        return batch


def eval_batches(
    blocks: np.ndarray, batch_size: int, prepare, *, seed: int, fields: dict[str, np.ndarray] | None = None
) -> list[dict]:
    """Held-out batches prepared once with a fixed seed, so every evaluation sees the same masks."""
    out = []
    for i, start in enumerate(range(0, len(blocks), batch_size)):
        rows = slice(start, start + batch_size)
        batch = {"input_ids": torch.from_numpy(np.asarray(blocks[rows], dtype=np.int64))}
        for name, values in (fields or {}).items():
            batch[name] = torch.from_numpy(np.asarray(values[rows], dtype=np.int64))
        out.append(prepare(batch, batch_generator(seed, 10**6, i)))
    return out


class MixedBatches(torch.utils.data.Dataset):
    """Batches of new blocks with a ``share`` of replayed old blocks in each (item ``i`` = batch ``i``).

    A batch holds ``floor(share·B)`` old rows, plus one more with probability ``frac(share·B)``
    (seeded per batch), so the expected share is exact for any batch size. New blocks follow one
    seeded permutation per epoch; old rows are drawn at random from the old blocks. The epoch ends
    when the new blocks run out. ``replayed(i)`` says which rows of batch ``i`` are old.
    """

    def __init__(
        self,
        new_blocks: np.ndarray,
        old_blocks: np.ndarray,
        batch_size: int,
        share: float,
        *,
        seed: int,
        epoch: int,
        prepare,
        rank: int = 0,
        world: int = 1,
    ):
        self._gen = batch_generator
        self.new, self.old, self.batch_size = new_blocks, old_blocks, batch_size
        self.seed, self.epoch, self.prepare, self.rank, self.world = seed, epoch, prepare, rank, world
        self.order = np.random.default_rng([seed, epoch]).permutation(len(new_blocks))
        base, frac = math.floor(share * batch_size), share * batch_size - math.floor(share * batch_size)
        rng = np.random.default_rng([seed, epoch, 99])
        n_old, starts, used = [], [], 0
        while True:  # global batches: rank r of global batch g is process r's batch g
            k = [base + int(rng.random() < frac) for _ in range(world)]
            need = sum(batch_size - x for x in k)
            if used + need > len(new_blocks) or (len(old_blocks) == 0 and any(k)):
                break
            n_old.append(k)
            starts.append(used)
            used += need
        self.n_old, self.starts = n_old, starts

    def __len__(self) -> int:
        return len(self.n_old)

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(new block indices, old block indices) of this process's batch ``i``."""
        k = self.n_old[i]
        start = self.starts[i] + sum(self.batch_size - x for x in k[: self.rank])
        new_idx = self.order[start : start + self.batch_size - k[self.rank]]
        old_idx = np.random.default_rng([self.seed, self.epoch, i, self.rank, 7]).integers(
            0, max(1, len(self.old)), size=k[self.rank]
        )
        return np.sort(new_idx), np.sort(old_idx)

    def indices(self, i: int) -> np.ndarray:
        return self.rows(i)[0]

    def replayed(self, i: int) -> np.ndarray:
        new_idx, old_idx = self.rows(i)
        return np.array([False] * len(new_idx) + [True] * len(old_idx))

    def __getitem__(self, i: int) -> dict:
        new_idx, old_idx = self.rows(i)
        parts = [np.asarray(self.new[new_idx], dtype=np.int64)]
        if len(old_idx):
            parts.append(np.asarray(self.old[old_idx], dtype=np.int64))
        batch = {"input_ids": torch.from_numpy(np.concatenate(parts))}
        return self.prepare(batch, self._gen(self.seed, self.epoch, i, self.rank))
