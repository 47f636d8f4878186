"""Train, save and load tokenizers.

:func:`train_tokenizer` streams texts into the ``tokenizers`` library (the corpus is never held in
memory as a whole), wraps the result in the generic transformers fast tokenizer
(:class:`transformers.TokenizersBackend`, which ``PreTrainedTokenizerFast`` aliases in transformers 5)
and saves it so that ``AutoTokenizer.from_pretrained(output_dir)`` gives back exactly the pipeline
that was trained.

Three kinds are supported:

``wordpiece``
    BERT style: ``BertNormalizer`` (every CJK character is its own word), ``BertPreTokenizer``,
    WordPiece with ``##`` continuations, ``[CLS] A [SEP] B [SEP]`` with token type ids.
``bpe``
    GPT-2 style byte-level BPE: every byte is in the vocabulary, so nothing is ever unknown.
    ``<|endoftext|>`` is bos/eos/unk, plus ``<pad>`` and ``<mask>`` (so it can serve masked LMs too).
``unigram``
    SentencePiece style Unigram with ``Metaspace`` and NFKC, and the same BERT-style special tokens
    and templates as ``wordpiece``. The vocabulary must hold every distinct character of the corpus.

Determinism: the same texts and settings give a byte-identical ``tokenizer.json``, in any process.
The Rust WordPieceTrainer does not (it iterates hash maps seeded per process), so ``wordpiece`` is
trained here (:func:`_wordpiece_vocab`: the same algorithm, canonical tie orders; the texts are still
normalized and pre-tokenized by the Rust pipeline). ``bpe`` uses the Rust BpeTrainer, which is
deterministic (ties go to the lower token ids, all in a fixed order for byte-level BPE). ``unigram``
uses the Rust UnigramTrainer, which is not deterministic; its output is put in a canonical form
(:func:`_canonicalize_unigram`) that is identical across runs unless EM itself picks different pieces.
"""

from __future__ import annotations

import heapq
import itertools
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmvalue.errors import CheckpointError, ConfigError, DataError, LmvalueError, setting

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "TOKENIZER_KINDS",
    "train_tokenizer",
    "load_tokenizer",
    "load_padding_tokenizer",
    "check_vocab_matches",
]

TOKENIZER_KINDS = ("wordpiece", "bpe", "unigram")

# Texts handed to the Rust trainer per batch: large enough to amortize the Python/Rust crossing,
# small enough that a batch of long documents stays a few MB.
_BATCH_SIZE = 1000

# Role -> token. The roles every kind needs; a custom ``special_tokens`` list must contain these.
_BERT_ROLES = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
_BPE_ROLES = {
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
_ROLES = {"wordpiece": _BERT_ROLES, "bpe": _BPE_ROLES, "unigram": _BERT_ROLES}
_DEFAULT_SPECIAL_TOKENS = {
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "bpe": ["<|endoftext|>", "<pad>", "<mask>"],
    "unigram": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}

# Files that mean "a tokenizer lives here" (written by transformers or by older slow tokenizers).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)

_TRAIN_HINT = "train one with `lmvalue tokenizer --output {path}` (see `lmvalue tokenizer --help`)"


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def train_tokenizer(
    texts: Iterable[str],
    output_dir: str | Path,
    *,
    kind: str = "wordpiece",
    vocab_size: int = 21128,
    lowercase: bool = True,
    special_tokens: list[str] | None = None,
    max_docs: int | None = None,
    min_frequency: int = 2,
    model_max_length: int = 512,
    show_progress: bool = False,
    overwrite: bool = False,
) -> PreTrainedTokenizerBase:
    """Train a tokenizer on ``texts``, save it to ``output_dir`` and return it (as loaded back).

    Args:
        texts: any iterable of strings (a list, a generator, an open text file...). It is read once,
            in batches, and never materialized. Blank texts are skipped.
        output_dir: folder to write. Written atomically (temp folder next to it, then renamed).
        kind: one of :data:`TOKENIZER_KINDS`.
        vocab_size: upper bound of the vocabulary, special tokens included (small corpora may give less).
        lowercase: lowercase (and, for wordpiece, strip accents) before tokenizing.
        special_tokens: the special tokens, in id order. Defaults: ``[PAD] [UNK] [CLS] [SEP] [MASK]``
            (wordpiece, unigram), ``<|endoftext|> <pad> <mask>`` (bpe). A custom list must contain these;
            any extra ones become extra special tokens.
        max_docs: read at most this many texts from ``texts``.
        min_frequency: pairs seen fewer times are not merged (wordpiece, bpe).
        model_max_length: the longest input the model takes, stored in the tokenizer.
        show_progress: show the trainer's progress bars (wordpiece: two lines on stderr).
        overwrite: replace a tokenizer already in ``output_dir`` (refused otherwise).

    Raises:
        ConfigError: bad arguments (all problems listed at once).
        CheckpointError: ``output_dir`` already holds a tokenizer and ``overwrite`` is False.
        DataError: no text, or a text that is not a string.
    """
    kind, special_tokens = _check_args(
        texts,
        kind=kind,
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        max_docs=max_docs,
        min_frequency=min_frequency,
        model_max_length=model_max_length,
    )
    output_dir = Path(output_dir).expanduser()
    _check_output_dir(output_dir, overwrite)

    stream = _TextStream(texts, max_docs, count_chars=(kind == "unigram"))
    backend = _build_backend(kind, lowercase, special_tokens)
    if kind == "wordpiece":
        _train_wordpiece(backend, stream, vocab_size, min_frequency, special_tokens, show_progress)
    else:
        trainer = _build_trainer(kind, vocab_size, min_frequency, special_tokens, show_progress)
        try:
            backend.train_from_iterator(
                stream.batches(), trainer=trainer, length=_known_length(texts, max_docs)
            )
        except Exception as err:
            if "not large enough to contain all chars" not in str(err):
                raise
            raise ConfigError(
                f"vocab_size={vocab_size} is too small for a unigram tokenizer on this corpus: unigram keeps "
                f"every distinct character and the texts have about {len(stream.chars)} of them. Set "
                f"vocab_size to at least {len(stream.chars) + len(special_tokens) + 100}, or use "
                "kind='wordpiece' (which keeps only the most frequent characters)."
            ) from err
        if kind == "unigram":
            _canonicalize_unigram(backend, len(special_tokens))

    _finish_backend(backend, kind, vocab_size, special_tokens)
    tokenizer = _wrap(backend, kind, special_tokens, model_max_length)
    _save_atomically(tokenizer, output_dir)
    return load_tokenizer(output_dir)


def _check_args(
    texts: Any,
    *,
    kind: Any,
    vocab_size: Any,
    special_tokens: Any,
    max_docs: Any,
    min_frequency: Any,
    model_max_length: Any,
) -> tuple[str, list[str]]:
    """Validate the arguments; raise one ConfigError listing every problem."""
    problems: list[str] = []
    if isinstance(texts, (str, bytes, os.PathLike)):
        problems.append(
            f"texts must be an iterable of strings, got a single {type(texts).__name__} ({str(texts)[:60]!r}); "
            "to train on a file, pass the open file (one text per line) or a list of lines"
        )
    elif not isinstance(texts, Iterable):
        problems.append(f"texts must be an iterable of strings, got {type(texts).__name__}")

    if kind not in TOKENIZER_KINDS:
        problems.append(
            f"unknown tokenizer kind {kind!r} ({setting('tokenizer.kind')}): use one of {', '.join(TOKENIZER_KINDS)}"
        )
        kind = "wordpiece"  # so the remaining checks can still run

    if special_tokens is None:
        special_tokens = list(_DEFAULT_SPECIAL_TOKENS[kind])
    elif isinstance(special_tokens, str) or not all(isinstance(t, str) and t for t in special_tokens):
        problems.append("special_tokens must be a list of non-empty strings")
        special_tokens = list(_DEFAULT_SPECIAL_TOKENS[kind])
    else:
        special_tokens = list(special_tokens)
        duplicates = sorted({t for t in special_tokens if special_tokens.count(t) > 1})
        if duplicates:
            problems.append(f"special_tokens has duplicates: {', '.join(duplicates)}")
        missing = [t for t in dict.fromkeys(_ROLES[kind].values()) if t not in special_tokens]
        if missing:
            problems.append(
                f"special_tokens for kind={kind!r} must include {', '.join(missing)} "
                f"(the default is {' '.join(_DEFAULT_SPECIAL_TOKENS[kind])})"
            )

    minimum = len(special_tokens) + (256 if kind == "bpe" else 1)
    if not _is_int(vocab_size) or vocab_size < minimum:
        why = (
            " (256 byte tokens + the special tokens)" if kind == "bpe" else " (more than the special tokens)"
        )
        problems.append(
            f"{setting('tokenizer.vocab_size')} must be an integer >= {minimum}{why}, got {vocab_size!r}"
        )
    if max_docs is not None and (not _is_int(max_docs) or max_docs < 1):
        problems.append(
            f"{setting('tokenizer.max_docs')} must be a positive integer (or left out: all), got {max_docs!r}"
        )
    if not _is_int(min_frequency) or min_frequency < 0:
        problems.append(
            f"{setting('tokenizer.min_frequency')} must be an integer >= 0, got {min_frequency!r}"
        )
    if not _is_int(model_max_length) or model_max_length < 1:
        problems.append(f"model_max_length must be a positive integer, got {model_max_length!r}")

    if problems:
        raise ConfigError("invalid tokenizer settings:\n  - " + "\n  - ".join(problems))
    return kind, special_tokens


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _known_length(texts: Iterable[str], max_docs: int | None) -> int | None:
    """Number of texts when it is known without reading them (a list, ...), else None."""
    if not isinstance(texts, Sized) or isinstance(texts, Iterator):
        return None
    try:
        length = len(texts)
    except TypeError:
        return None
    return length if max_docs is None else min(length, max_docs)


def _empty_message(read: int, max_docs: int | None) -> str:
    got = "the text stream was empty" if read == 0 else f"all {read} texts read were blank"
    cap = f" (max_docs={max_docs})" if max_docs is not None else ""
    return (
        f"no text to train the tokenizer on: {got}{cap}. Check the corpus path and the text column, "
        "or pass a larger max_docs."
    )


class _TextStream:
    """Reads ``texts`` once, lazily, in batches; counts what it read."""

    def __init__(self, texts: Iterable[str], max_docs: int | None, *, count_chars: bool = False):
        iterator: Iterator[Any] = iter(texts)
        if max_docs is not None:
            iterator = itertools.islice(iterator, max_docs)  # never pulls the (max_docs+1)-th item
        self._iterator = iterator
        self.read = 0  # texts consumed from the iterable
        self.kept = 0  # non-blank texts handed to the trainer
        self.chars: set[str] = set()
        self._count_chars = count_chars
        # Look at the first non-blank text now, so an empty corpus fails before any training.
        self._first = self._next_text()
        if self._first is None:
            raise DataError(_empty_message(self.read, max_docs))

    def _next_text(self) -> str | None:
        for text in self._iterator:
            self.read += 1
            if not isinstance(text, str):
                raise DataError(
                    f"text #{self.read} of the corpus is a {type(text).__name__}, not a string: "
                    "pass an iterable of str (decode bytes, pick the text column of records)"
                )
            if text.strip():
                self.kept += 1
                if self._count_chars:
                    self.chars.update(text)
                return text
        return None

    def batches(self) -> Iterator[list[str]]:
        batch = [self._first] if self._first is not None else []
        self._first = None
        while True:
            text = self._next_text()
            if text is None:
                break
            batch.append(text)
            if len(batch) >= _BATCH_SIZE:
                yield batch
                batch = []
        if batch:
            yield batch


def _build_backend(kind: str, lowercase: bool, special_tokens: list[str]) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=_BERT_ROLES["unk_token"], continuing_subword_prefix="##"))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())  # no unk: the byte alphabet covers every input
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    else:  # unigram
        tok = Tokenizer(models.Unigram())
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def _build_trainer(
    kind: str, vocab_size: int, min_frequency: int, special_tokens: list[str], show_progress: bool
) -> Any:
    """The Rust trainer for ``bpe`` and ``unigram`` (wordpiece has its own, see :func:`_train_wordpiece`)."""
    from tokenizers import pre_tokenizers, trainers

    if kind == "bpe":
        return trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
    return trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        unk_token=_BERT_ROLES["unk_token"],
        show_progress=show_progress,
    )


# --------------------------------------------------------------------------------------------------
# Deterministic WordPiece training
# --------------------------------------------------------------------------------------------------
#
# The Rust WordPieceTrainer (a BPE trainer with "##" continuations) iterates std HashMaps seeded per
# process: the "##x" forms get ids in hash order, merges tie-break on those ids, and limit_alphabet breaks
# count ties in hash order, so two runs on the same texts give different vocabularies. The trainer below
# follows the same algorithm with a canonical order everywhere, so the same texts and settings always give
# the same tokenizer.json.

_CONTINUATION = "##"


def _wordpiece_limit_alphabet(vocab_size: int, n_special: int) -> int:
    """Keep the alphabet below the budget (a CJK corpus can have more distinct characters than a small
    vocab_size); the rarest characters then become [UNK]. Some room is left for the "##x" forms."""
    budget = vocab_size - n_special
    return max(1, budget - min(1000, budget // 5))


def _count_words(backend: Tokenizer, batches: Iterable[list[str]]) -> Counter[str]:
    """Word counts of batches of texts after the backend's own normalizer and pre-tokenizer (the words the
    Rust trainers count)."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    words: Counter[str] = Counter()
    if not (
        isinstance(normalizer, normalizers.BertNormalizer)
        and isinstance(pre_tokenizer, pre_tokenizers.BertPreTokenizer)
    ):
        normalize = normalizer.normalize_str if normalizer is not None else str
        for batch in batches:
            for text in batch:
                words.update([word for word, _ in pre_tokenizer.pre_tokenize_str(normalize(text))])
        return words

    # Fast path, same counts: the BERT normalizer maps each character on its own (a space stays a space and
    # nothing combines across it) and the BERT pre-tokenizer first splits at whitespace. So batches of texts
    # are normalized joined by spaces, split at spaces here, and each distinct piece is pre-tokenized once.
    pieces: Counter[str] = Counter()
    for batch in batches:
        pieces.update(normalizer.normalize_str(" ".join(batch)).split(" "))
    for piece, count in pieces.items():
        for word, _ in pre_tokenizer.pre_tokenize_str(piece):
            words[word] += count
    return words


def _wordpiece_vocab(
    words: Counter[str], vocab_size: int, min_frequency: int, special_tokens: list[str], limit_alphabet: int
) -> list[str]:
    """Train WordPiece (BPE merges over ``##`` continuations) on word counts; return tokens in id order.

    The WordPieceTrainer algorithm, with every order made canonical:

    1. the special tokens, in order;
    2. the alphabet: the characters of the words (counted with the words' counts), at most
       ``limit_alphabet`` of them, chosen by (count descending, character); added in codepoint order.
       Characters left out are dropped from the words (they become [UNK]);
    3. every word becomes its first character and ``##``-prefixed following characters; the ``##c`` forms
       are added sorted;
    4. merges: repeatedly merge the adjacent pair with the highest count (counts weighted by word counts),
       ties broken by the pair's strings (left token, then right token, in codepoint order), while the
       count is >= ``min_frequency`` (and >= 1) and the vocabulary is smaller than ``vocab_size``. ``a`` +
       ``##b`` gives ``ab``, ``##a`` + ``##b`` gives ``##ab``. A merge whose result is already a token
       changes the words but adds nothing to the vocabulary.

    Pair counts are updated incrementally from the words that hold the merged pair (an index pair ->
    words), and the best pair comes from a heap whose stale entries are re-pushed with their current count.
    """
    # 1-2. special tokens, alphabet
    tokens: list[str] = []
    token_ids: dict[str, int] = {}

    def add(token: str) -> int:
        token_id = token_ids.get(token)
        if token_id is None:
            token_id = token_ids[token] = len(tokens)
            tokens.append(token)
        return token_id

    for token in special_tokens:
        add(token)
    char_counts: Counter[str] = Counter()
    for word, count in words.items():
        for char in word:
            char_counts[char] += count
    alphabet = [
        char for char, _ in sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit_alphabet]
    ]
    for char in sorted(alphabet):
        add(char)
    known = set(token_ids)  # a character is kept when it is a token (an alphabet char or a 1-char special)

    # 3. words as lists of token ids; only words of two symbols or more can be merged
    continuations = sorted({_CONTINUATION + c for word in words for c in word[1:] if c in known})
    for token in continuations:
        add(token)
    symbols: list[list[int]] = []
    counts: list[int] = []
    for word, count in words.items():
        ids = [token_ids[c if i == 0 else _CONTINUATION + c] for i, c in enumerate(word) if c in known]
        if len(ids) > 1:
            symbols.append(ids)
            counts.append(count)

    # 4. merges
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for index, ids in enumerate(symbols):
        count = counts[index]
        for pair in zip(ids, ids[1:], strict=False):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
            where.setdefault(pair, set()).add(index)
    heap = [(-count, tokens[a], tokens[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    prefix_len = len(_CONTINUATION)
    while len(tokens) < vocab_size and heap:
        neg_count, left, right, a, b = heapq.heappop(heap)
        pair = (a, b)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:  # stale entry: the count went down since it was pushed
            if count > 0:
                heapq.heappush(heap, (-count, left, right, a, b))
            continue
        if count < 1 or count < min_frequency:
            break  # the best pair is too rare: so is every other one
        new_id = add(left + (right[prefix_len:] if right.startswith(_CONTINUATION) else right))

        # Merge (a, b) left to right in every word that holds it, and collect the pair count changes:
        # the pairs around each merged occurrence lose one count and the pairs with the new token gain one.
        deltas: dict[tuple[int, int], int] = {}
        for index in where.pop(pair, ()):
            ids = symbols[index]
            n = len(ids)
            i = 0
            merged: list[int] = []
            changed = False
            word_count = counts[index]
            while i < n:
                if ids[i] == a and i + 1 < n and ids[i + 1] == b:
                    changed = True
                    if merged:
                        before = merged[-1]
                        deltas[(before, a)] = deltas.get((before, a), 0) - word_count
                        gained = (before, new_id)
                        deltas[gained] = deltas.get(gained, 0) + word_count
                        where.setdefault(gained, set()).add(index)
                    if i + 2 < n:
                        after = ids[i + 2]
                        deltas[(b, after)] = deltas.get((b, after), 0) - word_count
                        gained = (new_id, after)
                        deltas[gained] = deltas.get(gained, 0) + word_count
                        where.setdefault(gained, set()).add(index)
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            if changed:
                symbols[index] = merged
        for changed_pair, delta in deltas.items():
            count = pair_counts.get(changed_pair, 0) + delta
            if count > 0:
                pair_counts[changed_pair] = count
                if delta > 0:  # went up: push it (entries that went down are refreshed when popped)
                    x, y = changed_pair
                    heapq.heappush(heap, (-count, tokens[x], tokens[y], x, y))
            else:
                pair_counts.pop(changed_pair, None)
        pair_counts.pop(pair, None)  # every occurrence was merged
    return tokens


def _train_wordpiece(
    backend: Tokenizer,
    stream: _TextStream,
    vocab_size: int,
    min_frequency: int,
    special_tokens: list[str],
    show_progress: bool,
) -> None:
    """Train the backend's WordPiece model deterministically (see :func:`_wordpiece_vocab`)."""
    from tokenizers import models

    words = _count_words(backend, stream.batches())
    if show_progress:
        print(
            f"[tokenizer] {stream.kept} texts, {len(words)} distinct words; computing merges", file=sys.stderr
        )
    tokens = _wordpiece_vocab(
        words,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        limit_alphabet=_wordpiece_limit_alphabet(vocab_size, len(special_tokens)),
    )
    if show_progress:
        print(f"[tokenizer] {len(tokens)} tokens", file=sys.stderr)
    backend.model = models.WordPiece(
        vocab={token: i for i, token in enumerate(tokens)},
        unk_token=_BERT_ROLES["unk_token"],
        continuing_subword_prefix=_CONTINUATION,
    )
    backend.add_special_tokens(special_tokens)  # as the Rust trainer does after training


# --------------------------------------------------------------------------------------------------
# Unigram: a canonical form of the Rust trainer's output
# --------------------------------------------------------------------------------------------------

# Unigram scores are rounded to this many decimals: the Rust trainer sums floats in hash order, so the
# same corpus gives scores that differ in the last bits (~1e-12) from one process to the next.
_UNIGRAM_SCORE_DECIMALS = 5
# The Rust trainer gives the required characters that EM dropped the scores min + k * 1e-4 (k = 0, 1...),
# k in hash order.
_UNIGRAM_PENALTY_STEP = 1e-4


def _canonicalize_unigram(backend: Tokenizer, n_special: int) -> None:
    """Make the trained unigram model independent of the Rust trainer's hash orders.

    The Rust UnigramTrainer is not deterministic (it iterates hash maps with a per-process seed): the
    pieces are the same on the runs we checked, but (1) every score moves in the last bits, (2) the
    characters it must keep but EM dropped get the scores ``min + k * 1e-4`` with k in hash order, and
    (3) pieces with equal scores come in hash order. Here (2) those characters get the lowest learned
    score ``min`` (as if seen once), (1) scores are rounded to 5 decimals, and (3) pieces are sorted by
    (score descending, piece), after the special tokens, which keep their ids. This makes the output
    byte-identical across runs unless a score's noise straddles a rounding boundary or EM selects
    different pieces on a near tie (both rare; not guaranteed, as the training itself is the Rust one).
    """
    import json

    from tokenizers import models

    state = json.loads(backend.to_str())["model"]
    pieces: list[tuple[str, float]] = [(piece, float(score)) for piece, score in state["vocab"]]
    specials, learned = pieces[:n_special], pieces[n_special:]
    if learned:
        lowest = min(score for _, score in learned)
        on_ladder: dict[int, list[int]] = {}  # k -> indices of single characters at lowest + k * step
        for index, (piece, score) in enumerate(learned):
            if len(piece) == 1:
                k = round((score - lowest) / _UNIGRAM_PENALTY_STEP)
                if k >= 1 and abs(score - (lowest + k * _UNIGRAM_PENALTY_STEP)) < 1e-7:
                    on_ladder.setdefault(k, []).append(index)
        k = 1
        while k in on_ladder:  # the ladder is contiguous from k = 1
            for index in on_ladder[k]:
                learned[index] = (learned[index][0], lowest)
            k += 1
    rounded = [(piece, round(score, _UNIGRAM_SCORE_DECIMALS) + 0.0) for piece, score in learned]
    rounded.sort(key=lambda item: (-item[1], item[0]))
    backend.model = models.Unigram(specials + rounded, state.get("unk_id"), state.get("byte_fallback", False))


def _finish_backend(tok: Tokenizer, kind: str, vocab_size: int, special_tokens: list[str]) -> None:
    """Enforce the vocab bound and add the BERT-style templates."""
    from tokenizers import models, processors

    if tok.get_vocab_size() > vocab_size:
        if kind != "wordpiece":  # BPE starts at 256 + specials and the unigram trainer stops at vocab_size
            raise AssertionError(
                f"{kind} trainer gave {tok.get_vocab_size()} tokens > vocab_size={vocab_size}"
            )
        # The "##x" forms of the alphabet overflowed a tiny budget: drop the last (rarest) entries.
        vocab = {token: i for token, i in tok.get_vocab(with_added_tokens=False).items() if i < vocab_size}
        tok.model = models.WordPiece(
            vocab=vocab, unk_token=_BERT_ROLES["unk_token"], continuing_subword_prefix="##"
        )

    if kind in ("wordpiece", "unigram"):
        cls, sep = _BERT_ROLES["cls_token"], _BERT_ROLES["sep_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
    for token in special_tokens:
        if tok.token_to_id(token) is None:  # cannot happen with the trainers above; guard the contract
            raise AssertionError(f"special token {token} missing from the trained vocabulary")


def _wrap(backend: Tokenizer, kind: str, special_tokens: list[str], model_max_length: int) -> Any:
    """Wrap in the generic transformers fast tokenizer, which loads tokenizer.json verbatim.

    Model-specific classes (BertTokenizer, ...) have their own ``__init__`` that rebuilds the pipeline
    from the vocabulary with that model's fixed normalizer/pre-tokenizer, so they would not reproduce a
    unigram or lowercase=False pipeline; TokenizersBackend keeps whatever was trained.
    """
    from transformers import TokenizersBackend

    roles = _ROLES[kind]
    extra = [t for t in special_tokens if t not in set(roles.values())]
    kwargs: dict[str, Any] = dict(roles)
    if extra:
        kwargs["extra_special_tokens"] = extra
    if kind == "bpe":
        kwargs["model_input_names"] = ["input_ids", "attention_mask"]  # decoders have no segments
    else:  # BERT-style pairs: the default (no token_type_ids) would drop the segment ids
        kwargs["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    return TokenizersBackend(
        tokenizer_object=backend,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,  # the WordPiece decoder already cleans up; others must not
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# Writing the output folder
# --------------------------------------------------------------------------------------------------


def _tokenizer_files_in(folder: Path) -> list[str]:
    return [name for name in _TOKENIZER_FILES if (folder / name).is_file()]


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise CheckpointError(
            f"tokenizer output {output_dir} is a file, not a folder: pass a folder path with --output"
        )
    if output_dir.is_dir() and not overwrite:
        found = _tokenizer_files_in(output_dir)
        if found:
            raise CheckpointError(
                f"{output_dir} already contains a tokenizer ({', '.join(found)}): choose another output "
                "folder, or pass overwrite=True (--overwrite) to replace it"
            )


def _save_atomically(tokenizer: Any, output_dir: Path) -> None:
    """save_pretrained into a temp folder next to ``output_dir``, then move it into place.

    A new folder is renamed into place in one step. Into an existing folder (which may hold other
    things, e.g. a model checkpoint) the files are moved one by one with tokenizer.json last, after the
    old tokenizer files are removed: an interruption leaves no tokenizer.json, never a mix of two.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        if not (tmp / "tokenizer.json").is_file():
            raise AssertionError(f"save_pretrained wrote no tokenizer.json in {tmp}")
        try:
            os.rename(tmp, output_dir)  # atomic; fails if output_dir exists (unless it is an empty dir)
            return
        except OSError:
            if not output_dir.is_dir():
                raise
        for name in _TOKENIZER_FILES:  # old tokenizer (overwrite=True was checked before training)
            (output_dir / name).unlink(missing_ok=True)
        written = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in written if n != "tokenizer.json"] + ["tokenizer.json"]:
            os.replace(tmp / name, output_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Loading and checking
# --------------------------------------------------------------------------------------------------


def _looks_like_local_path(path_or_name: str | Path) -> bool:
    if isinstance(path_or_name, Path):
        return True
    text = str(path_or_name)
    return (
        text.startswith((".", "~", "/"))
        or os.path.isabs(text)
        or "\\" in text
        or text.count("/") > 1  # hub ids are "name" or "owner/name"
    )


def load_tokenizer(path_or_name: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder (as written by :func:`train_tokenizer`) or a hub name.

    Raises:
        LmvalueError: the folder does not exist, holds no tokenizer files, or cannot be loaded.
    """
    from transformers import AutoTokenizer

    from lmvalue.files import PACKAGE_PREFIX, package_model_folder

    if str(path_or_name).startswith(PACKAGE_PREFIX):
        path_or_name = package_model_folder(str(path_or_name))
    path = Path(path_or_name).expanduser()
    if path.exists() or _looks_like_local_path(path_or_name):
        if not path.exists():
            raise LmvalueError(
                f"tokenizer folder {path} does not exist: check the path, or " + _TRAIN_HINT.format(path=path)
            )
        if not path.is_dir():
            parent = f" (did you mean its folder {path.parent}?)" if path.name in _TOKENIZER_FILES else ""
            raise LmvalueError(f"tokenizer path {path} is a file, not a folder{parent}")
        if not _tokenizer_files_in(path):
            raise LmvalueError(
                f"{path} holds no tokenizer files (expected tokenizer.json and tokenizer_config.json): "
                + _TRAIN_HINT.format(path=path)
            )
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except Exception as err:  # corrupt or foreign files: the user's data, not a bug here
            raise LmvalueError(
                f"could not load the tokenizer in {path}: {err}. Re-create it, e.g. "
                + _TRAIN_HINT.format(path=path)
                + " with --overwrite"
            ) from err
    try:
        return AutoTokenizer.from_pretrained(str(path_or_name))
    except (OSError, ValueError) as err:
        raise LmvalueError(
            f"could not load tokenizer {str(path_or_name)!r}: no such local folder, and the Hugging Face Hub "
            f"did not provide it ({err}). Check the name (and that you are online, or that it is cached), "
            "or " + _TRAIN_HINT.format(path="DIR")
        ) from err


def load_padding_tokenizer(path_or_name: str | Path) -> PreTrainedTokenizerBase:
    """:func:`load_tokenizer`, with the end-of-text token as padding when it has no padding token
    (GPT-2 style), so batches of a task can be padded.

    Raises:
        LmvalueError: it has neither a padding nor an end-of-text token.
    """
    tokenizer = load_tokenizer(path_or_name)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise LmvalueError(
                "the tokenizer has neither a padding nor an end-of-text token to pad batches with"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_vocab_matches(tokenizer: PreTrainedTokenizerBase, model_config: Any) -> None:
    """Raise LmvalueError when the tokenizer has ids the model's embedding cannot look up.

    Fewer tokens than embedding rows is fine (models often pad their vocab to a multiple of 8...).
    """
    config = model_config
    if getattr(config, "vocab_size", None) is None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    rows = getattr(config, "vocab_size", None)
    if rows is None:
        return  # nothing to compare with
    n_tokens = len(tokenizer)
    if n_tokens > rows:
        where = getattr(tokenizer, "name_or_path", "") or "(in memory)"
        raise LmvalueError(
            f"tokenizer at {where} has {n_tokens} tokens but the model's embedding has {rows} rows: use the "
            "tokenizer the model was trained with, or (when pretraining from scratch) build the model with "
            f"vocab_size={n_tokens}, or call model.resize_token_embeddings(len(tokenizer)) and train the new rows"
        )
