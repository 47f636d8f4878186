"""`lmvalue drift`: new text of the same kind is no drift, text of another kind is, with the evidence."""

import json

import pytest
from tests.conftest import TINY_MODEL

from lmvalue.cli import main
from lmvalue.config import PretrainConfig, build_config
from lmvalue.drift import DriftSettings, measure_drift, two_sample_test, words


@pytest.fixture(scope="module")
def reviews_lm(tmp_path_factory, zh_tokenizer_dir):
    from lmvalue.pretraining import pretrain

    out = tmp_path_factory.mktemp("drift") / "run"
    over = {
        **TINY_MODEL,
        "model.tokenizer": str(zh_tokenizer_dir),
        "data.source": "demo:zh-reviews",
        "data.max_docs": 1500,
        "data.block_size": 64,
        "train.output_dir": str(out),
        "train.batch_size": 8,
        "train.max_steps": 30,
        "train.eval_every": 1000,
        "train.lr": 2e-3,
        "train.progress": False,
        "train.threads": 1,
    }
    pretrain(build_config(PretrainConfig, overrides=over))
    return out


def test_same_kind_is_no_drift_another_kind_is(reviews_lm, reviews, tmp_path):
    from itertools import islice

    from lmvalue.data.sources import iter_texts

    more_reviews = tmp_path / "reviews.txt"
    more_reviews.write_text("\n".join(r["text"] for r in reviews[5000:5150]), encoding="utf-8")
    news = tmp_path / "news.txt"
    news.write_text(
        "\n".join(islice((t for t in iter_texts("demo:zh-news") if len(t) > 10), 150)), encoding="utf-8"
    )
    s = DriftSettings(max_docs=150, permutations=30, alpha=0.05)
    # the reference is the run's own corpus, read from its config.yaml
    same = measure_drift(str(reviews_lm), str(more_reviews), None, str(tmp_path / "same"), s)
    other = measure_drift(str(reviews_lm), str(news), None, str(tmp_path / "other"), s)
    assert same["reference"] == "demo:zh-reviews"
    assert not same["drift"] and same["two_sample"]["auc"] < 0.65, same["verdict"]
    assert other["drift"] and other["two_sample"]["auc"] > 0.9, other["verdict"]
    assert other["two_sample"]["p_value"] == pytest.approx(1 / 31)  # no shuffle reached the observed AUC
    assert other["vocabulary"]["new_word_rate"] > same["vocabulary"]["new_word_rate"]
    assert other["verdict"].startswith("DRIFT") and same["verdict"].startswith("no drift")
    saved = json.loads((tmp_path / "other" / "drift.json").read_text(encoding="utf-8"))
    assert saved["drift"] is True and saved["documents"] == {"reference": 150, "new": 150}
    assert saved["lm_loss"]["ci95"][0] <= saved["lm_loss"]["difference"] <= saved["lm_loss"]["ci95"][1]


def test_two_sample_test_on_known_distributions():
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(80, 5)), rng.normal(size=(80, 5))
    s = DriftSettings(permutations=20)
    null = two_sample_test(a, b, s)
    shifted = two_sample_test(a, b + 1.0, s)
    assert null["p_value"] > 0.05 and 0.3 < null["auc"] < 0.7
    assert shifted["auc"] > 0.9 and shifted["p_value"] == pytest.approx(1 / 21)
    assert words("好的 Hello, world 123") == ["好", "的", "hello", "world"]


def test_a_model_that_does_not_name_its_corpus_needs_a_reference(reviews_lm, tmp_path, capsys):
    folder = tmp_path / "bare"
    import shutil

    shutil.copytree(reviews_lm / "model", folder)
    (tmp_path / "new.txt").write_text("一\n" * 20, encoding="utf-8")
    code = main(
        ["drift", "--model", str(folder), "--new", str(tmp_path / "new.txt"), "-o", str(tmp_path / "d")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--reference" in err and "Traceback" not in err
    code = main(
        ["drift", "--model", str(reviews_lm), "--new", str(tmp_path / "new.txt"), "--permutations", "50"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--permutations 100 or more" in err


def test_a_serve_log_shows_its_predicted_label_shift(reviews_lm, reviews, tmp_path, capsys):
    from lmvalue.config import FinetuneConfig
    from lmvalue.finetuning import finetune

    over = {
        "method.name": "tfidf",
        "budget.train_size": 300,
        "data.test_size": 100,
        "train.output_dir": str(tmp_path / "clf"),
        "train.progress": False,
    }
    finetune(build_config(FinetuneConfig, overrides=over), train_examples=reviews[:1000])
    # a request log (lmvalue serve --log-inputs): only negative reviews came in, logged as such
    negative = [r["text"] for r in reviews[6000:8000] if r["label"] == "neg"][:120]
    log = tmp_path / "seen.jsonl"
    log.write_text(
        "".join(
            json.dumps(
                {
                    "time": "t",
                    "text": t,
                    "prediction": [{"label": "neg", "score": 0.9}, {"label": "pos", "score": 0.1}],
                },
                ensure_ascii=False,
            )
            + "\n"
            for t in negative
        ),
        encoding="utf-8",
    )
    code = main(
        [
            "drift",
            "--model",
            str(reviews_lm),
            "--new",
            str(log),
            "--task-model",
            str(tmp_path / "clf"),
            "--max-docs",
            "120",
            "--permutations",
            "100",
            "-o",
            str(tmp_path / "d"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "d" / "drift.json").read_text(encoding="utf-8"))
    shift = r["label_shift"]
    assert shift["from_log"] == 120 and shift["new_share"] == {"neg": 1.0, "pos": 0.0}
    assert 0.2 < shift["reference_share"]["neg"] < 0.8  # the classifier sees both classes in the reference
    assert shift["p_value"] < 1e-6 and shift["total_variation"] > 0.2
    assert "predicted labels neg" in out


def test_two_sample_p_value_is_uniform_under_the_null():
    """Same-distribution samples: the permutation p-value is (discretely) uniform, so a 0.05 level
    rejects about 5% of the time and the p-values spread over [0, 1]."""
    import numpy as np

    rng = np.random.default_rng(1)
    p = []
    for sim in range(60):
        a, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
        p.append(two_sample_test(a, b, DriftSettings(permutations=19, seed=sim))["p_value"])
    p = np.array(p)
    assert (p <= 0.05).mean() <= 0.15  # 5% expected; 0.15 is 2.8 binomial standard errors above
    assert 0.35 < p.mean() < 0.65  # uniform on {1/20, ..., 1}: mean 0.525
    assert 0.3 < (p <= 0.5).mean() < 0.7
    shifted = [
        two_sample_test(
            rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 0.8, DriftSettings(permutations=19)
        )
        for _ in range(5)
    ]
    assert all(r["p_value"] <= 0.05 for r in shifted)  # and it has power against a real shift
