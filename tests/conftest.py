"""Shared fixtures: offline, tiny models, a tokenizer trained once per session on real demo data."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The token cache of the test session lives in a temporary folder, never in ~/.cache.
os.environ.setdefault("LMVALUE_CACHE", tempfile.mkdtemp(prefix="lmvalue-test-cache-"))

import pytest  # noqa: E402

TINY_MODEL = {
    "model.preset": "tiny",
    "model.hidden": 64,
    "model.heads": 2,
    "model.ffn": 128,
    "model.max_position_embeddings": 128,
}


def write_balanced_reviews(path, per_class: int):
    """The first ``per_class`` positive and negative reviews of demo:zh-reviews as JSON Lines at ``path``."""
    import json

    from lmvalue.data.sources import load_labeled

    rows = load_labeled("demo:zh-reviews")
    pos = [r for r in rows if r["label"] == "pos"][:per_class]
    neg = [r for r in rows if r["label"] == "neg"][:per_class]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pos + neg), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def zh_tokenizer_dir(tmp_path_factory):
    """A small wordpiece tokenizer trained on 2,000 reviews of demo:zh-reviews."""
    from lmvalue.data.sources import iter_texts
    from lmvalue.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "zh-wordpiece"
    train_tokenizer(iter_texts("demo:zh-reviews", max_docs=2000), out, kind="wordpiece", vocab_size=1500)
    return out


@pytest.fixture()
def tiny_pretrain_overrides(zh_tokenizer_dir, tmp_path):
    """Overrides for a pretraining run of a few seconds on 1,500 real reviews."""
    return {
        **TINY_MODEL,
        "model.tokenizer": str(zh_tokenizer_dir),
        "data.source": "demo:zh-reviews",
        "data.max_docs": 1500,
        "data.block_size": 64,
        "data.eval_fraction": 0.05,
        "data.eval_max_blocks": 32,
        "train.output_dir": str(tmp_path / "run"),
        "train.batch_size": 8,
        "train.max_steps": 20,
        "train.eval_every": 10,
        "train.save_every": 5,
        "train.lr": 2e-3,
        "train.warmup": 2,
        "train.progress": False,
        "train.threads": 1,
    }


@pytest.fixture(scope="session")
def char_tokenizer_dir(tmp_path_factory):
    """A BERT-style tokenizer whose vocabulary is *built*, not trained: the 1,200 most frequent
    characters of 2,000 reviews (ties broken by the character) plus ``##`` continuations of ASCII
    letters and digits. Unlike a trained one (the ``tokenizers`` trainers break frequency ties
    differently from run to run), it is the same in every session, so fine-tuning tests that
    assert learning margins see the same token ids every time."""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from lmvalue.data.sources import iter_texts

    counts = Counter(ch for text in iter_texts("demo:zh-reviews", max_docs=2000) for ch in text.lower())
    chars = [c for c, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0])) if not c.isspace()][:1200]
    ascii_ = "abcdefghijklmnopqrstuvwxyz0123456789"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + sorted(set(chars) | set(ascii_)) + [f"##{c}" for c in ascii_]
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    out = tmp_path_factory.mktemp("tok") / "zh-chars"
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def reviews():
    """demo:zh-reviews without repeated texts, in a fixed random order (read-only)."""
    import random

    from lmvalue.data.budget import dedupe
    from lmvalue.data.sources import load_labeled

    examples, _ = dedupe(load_labeled("demo:zh-reviews"))
    random.Random(0).shuffle(examples)
    return examples


@pytest.fixture
def chromium() -> str:
    """Headless Chromium for the browser tests: skipped where it is absent, except in CI
    (LMVALUE_REQUIRE_BROWSER, set by .ci/run, which installs it), where its absence fails."""
    import os
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        if os.environ.get("LMVALUE_REQUIRE_BROWSER"):
            pytest.fail(
                "LMVALUE_REQUIRE_BROWSER is set but Chromium is not installed (apt-get install chromium)"
            )
        pytest.skip("Chromium not installed (apt-get install chromium)")
    return path
