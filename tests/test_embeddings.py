"""The static word-vector baseline: vectors learned from unlabeled text (cached), averaged,
logistic regression; it learns, saves and reloads; and its value-study arm."""

import numpy as np
import pytest

from lmvalue.errors import ConfigError
from lmvalue.finetuning import finetune, finetune_config
from lmvalue.inference import load_task_model, score
from lmvalue.methods.embeddings import MeanVectors, words

pytest.importorskip("gensim")


@pytest.fixture(scope="module")
def corpus(reviews, tmp_path_factory):
    """Unlabeled text: 6,000 reviews outside the labeled pool used below."""
    path = tmp_path_factory.mktemp("corpus") / "unlabeled.txt"
    path.write_text("\n".join(e["text"].replace("\n", " ") for e in reviews[3000:9000]), encoding="utf-8")
    return path


def run_cfg(out, corpus, **kw):
    return finetune_config(
        overrides={
            "method.name": "embeddings",
            "method.vectors.source": str(corpus),
            "method.vectors.dim": 48,
            "method.vectors.epochs": 3,
            "data.test_size": 300,
            "budget.train_size": 500,
            "train.output_dir": str(out),
            **kw,
        },
    )


def test_word_vectors_from_unlabeled_text_learn_the_task_and_reload(reviews, corpus, tmp_path):
    m = finetune(run_cfg(tmp_path / "a", corpus), train_examples=reviews[:3000])
    info = m["embeddings"]
    assert info["segmentation"] == "jieba" and info["dim"] == 48 and info["words"] > 1000
    assert info["coverage"] > 0.95 and not info["cached"]
    assert m["test"]["accuracy"] >= 0.68, m["test"]  # chance: 0.5 on 300 test reviews
    assert m["trainable_params"] == 48 + 1  # binary logistic regression on 48 dims
    task = load_task_model(tmp_path / "a" / "model")
    data_test = [e for e in reviews[:3000]]  # the same carve as the run
    from lmvalue.finetuning import load_task_data

    test = load_task_data(run_cfg(tmp_path / "x", corpus), train_examples=data_test).test
    assert score(task, test)["accuracy"] == pytest.approx(m["test"]["accuracy"])
    # the second run with the same corpus and settings reuses the cached vectors
    again = finetune(run_cfg(tmp_path / "b", corpus), train_examples=reviews[:3000])
    assert again["embeddings"]["cached"] and again["test"]["accuracy"] == m["test"]["accuracy"]


def test_mean_vectors_and_segmentation():
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=2)
    kv.add_vectors(["质量", "好", "good"], np.array([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32))
    assert words("质量很好", cjk=True)[0] == "质量"
    assert words("Good movie, GOOD!", cjk=False) == ["good", "movie", "good"]
    x = MeanVectors(kv, cjk=False).transform(["good movie", "nothing known"])
    np.testing.assert_allclose(x, [[1.0, 0.0], [0.0, 0.0]])
    x = MeanVectors(kv, cjk=True).transform(["质量好"])
    np.testing.assert_allclose(
        x[0], np.array([3.0, 5.0]) / 2 / np.linalg.norm(np.array([3.0, 5.0]) / 2), rtol=1e-6
    )


def test_embeddings_without_vectors_are_refused(reviews, tmp_path):
    with pytest.raises(ConfigError, match="method.vectors"):
        run_cfg(tmp_path / "c", None, **{"method.vectors.source": None})
    assert not (tmp_path / "c").exists()


def test_word_vectors_are_reproducible_under_a_seed(reviews):
    from lmvalue.methods.embeddings import train_vectors

    texts = [e["text"] for e in reviews[:1500]]
    a = train_vectors(texts, cjk=True, dim=16, epochs=1, min_count=3, seed=0)
    b = train_vectors(texts, cjk=True, dim=16, epochs=1, min_count=3, seed=0)
    c = train_vectors(texts, cjk=True, dim=16, epochs=1, min_count=3, seed=1)
    assert np.array_equal(a.vectors, b.vectors) and not np.array_equal(a.vectors, c.vectors)


def test_gensim_info_log_is_quiet_unless_verbose(reviews, tmp_path, caplog):
    """gensim logged every vocabulary scan, epoch and save at INFO through the CLI; only -v shows it."""
    import csv
    import logging

    from lmvalue.cli import main

    data = tmp_path / "labeled.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([e["text"], e["label"]] for e in reviews[:300])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(e["text"].replace("\n", " ") for e in reviews[300:900]), encoding="utf-8")
    args = ["finetune", "--method", "embeddings", "--data", str(data), "data.test_size=60"]
    args += [f"method.vectors.source={corpus}", "method.vectors.dim=16", "method.vectors.epochs=1"]
    with caplog.at_level(logging.INFO):
        assert main([*args, "-o", str(tmp_path / "a")]) == 0
    assert not [r for r in caplog.records if r.name.startswith("gensim")]
    assert any("trained" in r.getMessage() and "word vectors" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        assert main(["-v", *args, "-o", str(tmp_path / "b")]) == 0
    assert [r for r in caplog.records if r.name.startswith("gensim")]  # -v shows it
    logging.getLogger("gensim").setLevel(logging.WARNING)  # as a later quiet run would set it


def test_hybrid_reads_both_views_and_learns(reviews, corpus, tmp_path):
    """hybrid: the averaged vectors and the TF-IDF n-grams side by side in one regression; it learns
    on real reviews, reloads, and its coefficients cover both blocks of features."""
    m = finetune(run_cfg(tmp_path / "h", corpus, **{"method.name": "hybrid"}), train_examples=reviews[:3000])
    info = m["hybrid"]
    assert info["dim"] == 48 and info["ngram_features"] > 1000 and info["analyzer"] == "char"
    assert m["trainable_params"] == 48 + info["ngram_features"] + 1
    assert m["test"]["accuracy"] >= 0.70, m["test"]
    task = load_task_model(tmp_path / "h" / "model")
    coef = task.pipeline.named_steps["logreg"].coef_[0]
    assert np.abs(coef[:48]).max() > 0.1 and np.abs(coef[48:]).max() > 0.1  # both views are used
    with pytest.raises(ConfigError, match="method hybrid needs method.vectors"):
        finetune_config(overrides={"method.name": "hybrid"})
