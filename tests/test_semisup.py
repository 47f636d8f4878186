"""Self-training and distillation (lmvalue.value.semisup and the +self / distill: arms of a study)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmvalue.value.semisup import (
    Candidate,
    class_prior,
    near_duplicate_mask,
    select_pseudo,
    self_train,
    unlabeled_pool,
)
from lmvalue.value.study import StudyConfig, parse_arm, study_problems


def test_quotas_follow_the_labeled_class_prior_even_when_the_teacher_is_skewed():
    rng = np.random.default_rng(0)
    n = 1000
    # the teacher calls 80% of the texts "a", but the labels say a:b:c = 50:30:20
    p_a = np.where(np.arange(n) < 800, 0.9, 0.05)
    p_b = np.where((np.arange(n) >= 800) & (np.arange(n) < 900), 0.9, 0.05)
    probs = np.stack([p_a, p_b, 1 - p_a - p_b], axis=1) + rng.uniform(0, 0.01, (n, 3))
    texts = [f"t{i}" for i in range(n)]
    prior = class_prior(["a"] * 5 + ["b"] * 3 + ["c"] * 2, ["a", "b", "c"])
    kept = select_pseudo(texts, probs, ["a", "b", "c"], prior, fraction=1.0)
    counts = {c: sum(e["label"] == c for e in kept) for c in "abc"}
    # b is predicted for 100 texts, a third of its quota of 300: every quota shrinks by that factor
    # (c has 100 of its 200), so the kept set still follows the prior
    assert counts == {"a": 166, "b": 100, "c": 66}
    # the kept examples of a class are its most confident ones
    conf_a = sorted(probs[:800, 0], reverse=True)[165]
    assert all(e["confidence"] >= conf_a for e in kept if e["label"] == "a")
    small = select_pseudo(texts, probs, ["a", "b", "c"], prior, fraction=0.1)
    assert {c: sum(e["label"] == c for e in small) for c in "abc"} == {"a": 50, "b": 30, "c": 20}
    assert len({e["text"] for e in kept}) == len(kept)  # no text twice


def test_a_class_the_teacher_never_predicts_gets_no_pseudo_labels_and_others_keep_theirs():
    probs = np.array([[0.9, 0.1, 0.0]] * 10 + [[0.2, 0.8, 0.0]] * 10)
    kept = select_pseudo([str(i) for i in range(20)], probs, ["a", "b", "c"], np.array([0.4, 0.4, 0.2]), 1.0)
    assert {e["label"] for e in kept} == {"a", "b"}
    assert sum(e["label"] == "a" for e in kept) == sum(e["label"] == "b" for e in kept) == 8


def test_pool_drops_test_texts_and_their_near_duplicates(tmp_path):
    test = ["这家酒店的服务非常好，房间也很干净，下次还会再来。", "物流太慢了，等了整整两个星期才到货。"]
    corpus = [
        test[0],  # verbatim
        "这家酒店的服务非常好，房间也很干净，下次还会再来!",  # near duplicate (punctuation)
        "这家酒店的服务非常好，房间也很干净，下次还会再来。。",
        "手机屏幕很清晰，电池也耐用，性价比很高。",
        "衣服的颜色和图片上不一样，有点失望。",
        "物流太慢了，等了整整两个星期才到货",  # test[1] without its full stop
    ]
    mask = near_duplicate_mask(corpus, test)
    assert mask.tolist() == [True, True, True, False, False, True]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    counts = unlabeled_pool(path, test, tmp_path / "pool.txt", max_texts=100)
    pool = (tmp_path / "pool.txt").read_text(encoding="utf-8").splitlines()
    assert pool == corpus[3:5]
    assert counts == {"corpus_texts": 6, "dropped_test_duplicates": 4, "pool_texts": 2}
    unlabeled_pool(path, test, tmp_path / "one.txt", max_texts=1)
    assert len((tmp_path / "one.txt").read_text(encoding="utf-8").splitlines()) == 1


def _cand(dev, loss=0.5):
    return Candidate(model=None, dev_score=dev, dev_loss=loss, round=0)


def test_self_training_chooses_round_and_share_on_dev_and_stops_when_a_round_is_worse():
    # a fake learner whose dev score depends on how many pseudo-labels it got
    dev_by_count = {0: 0.60, 2: 0.62, 6: 0.70, 20: 0.65}
    seen = []

    def fit(extra):
        seen.append(len(extra))
        return _cand(dev_by_count[len(extra)])

    texts = [f"t{i}" for i in range(20)]
    probs = np.tile([0.7, 0.3], (20, 1))
    probs[10:] = [0.2, 0.8]
    winner, history = self_train(
        fit,
        lambda model, t: probs,
        texts,
        ["a", "b"],
        np.array([0.5, 0.5]),
        rounds=3,
        fractions=(0.1, 0.3, 1.0),
    )
    assert (winner.round, winner.fraction, winner.pseudo, winner.dev_score) == (1, 0.3, 6, 0.70)
    # round 2's best equals round 1's (same pseudo-labels): not worse, so round 3 runs too, and
    # the winner stays the first model that reached the best dev score
    assert seen == [0, 2, 6, 20, 2, 6, 20, 2, 6, 20]
    assert [h["round"] for h in history] == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3]

    def worse(extra):
        return _cand(0.9 if not extra else 0.5)

    winner, history = self_train(worse, lambda m, t: probs, texts, ["a", "b"], np.array([0.5, 0.5]))
    assert winner.round == 0 and len(history) == 4  # the teacher stays; one round only


@pytest.fixture(scope="module")
def reviews():
    from lmvalue.data.sources import load_labeled

    rows = load_labeled("demo:zh-reviews")
    rng = np.random.default_rng(1)
    return [rows[i] for i in rng.permutation(len(rows))[:3400]]


def test_a_student_of_a_perfect_teacher_reaches_what_its_labels_are_worth(reviews):
    """A perfect teacher's pseudo-labels are the truth: through the selection (quotas, confidence
    order) they must reach the student intact, so the student scores on gold dev what the same learner
    trained on those texts' true labels scores, and far more than the gold budget alone."""
    from lmvalue.config import MethodConfig
    from lmvalue.inference import TaskModel, score
    from lmvalue.methods import tfidf
    from lmvalue.tasks import build_spec

    gold, dev, pool = reviews[:60], reviews[600:900], reviews[900:]
    spec = build_spec("classification", reviews[:900])
    cfg = MethodConfig(name="tfidf")

    def fit(examples):
        pipe, _ = tfidf.train(examples, [], spec, cfg, 0, None)
        return TaskModel(spec=spec, pipeline=pipe)

    truth = {ex["text"]: ex["label"] for ex in pool}
    classes = list(spec.labels)
    texts = [ex["text"] for ex in pool]
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.6, 1.0, len(texts))  # a perfect teacher with varying confidence
    probs = np.array(
        [[c if truth[t] == k else 1 - c for k in classes] for t, c in zip(texts, conf, strict=True)]
    )
    prior = class_prior([ex["label"] for ex in gold], classes)
    pseudo = select_pseudo(texts, probs, classes, prior, 1.0)
    assert all(truth[e["text"]] == e["label"] for e in pseudo)  # every label reaches its own text
    assert len(pseudo) > 2000
    student = fit([{"text": e["text"], "label": e["label"]} for e in pseudo])
    kept = {e["text"] for e in pseudo}
    reference = fit([ex for ex in pool if ex["text"] in kept])  # the same texts with their true labels
    s_acc = score(student, dev)["accuracy"]
    assert s_acc == pytest.approx(score(reference, dev)["accuracy"], abs=1e-9)
    assert s_acc > score(fit(gold), dev)["accuracy"] + 0.1


def test_a_student_of_a_real_teacher_follows_it(reviews):
    """A real teacher's hard pseudo-labels carry its decisions (the student agrees with it on most
    dev texts) but not all it knows: the student of a TF-IDF teacher scores a few points below it.
    This is the loss docs/value-recipes.md measures in the studies."""
    from lmvalue.config import MethodConfig
    from lmvalue.inference import TaskModel, score
    from lmvalue.methods import tfidf
    from lmvalue.tasks import build_spec

    gold, dev, pool = reviews[:600], reviews[600:900], reviews[900:]
    spec = build_spec("classification", gold)
    cfg = MethodConfig(name="tfidf")

    def fit(examples):
        pipe, _ = tfidf.train(examples, [], spec, cfg, 0, None)
        return TaskModel(spec=spec, pipeline=pipe)

    teacher = fit(gold)
    texts = [ex["text"] for ex in pool]
    probs = np.stack(teacher.outputs([{"text": t} for t in texts]))
    prior = class_prior([ex["label"] for ex in gold], list(spec.labels))
    student = fit(select_pseudo(texts, probs, list(spec.labels), prior, 1.0))
    t_acc, s_acc = score(teacher, dev)["accuracy"], score(student, dev)["accuracy"]
    assert t_acc > 0.75  # a real teacher
    agree = np.mean(
        [a["label"] == b["label"] for a, b in zip(teacher.predict(dev), student.predict(dev), strict=True)]
    )
    assert agree > 0.85 and s_acc > t_acc - 0.06, (agree, t_acc, s_acc)


def test_self_trained_and_distilled_arms_in_a_study(reviews, tmp_path):
    """+self and distill: arms end to end: the pool never holds a test text or a cell's labeled text,
    the chosen round is recorded, and the self-trained arm uses its pseudo-labels."""
    from lmvalue.value.registry import Registry
    from lmvalue.value.study import run_study

    path = tmp_path / "reviews.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reviews[:700]), encoding="utf-8"
    )
    tiny = {"model.hidden": 32, "model.heads": 2, "model.ffn": 64, "model.num_layers": 1}
    cfg = StudyConfig(
        output_dir=str(tmp_path / "study"),
        data=str(path),
        test_size=150,
        arms=["nbsvm", "nbsvm+self", "distill:nbsvm"],
        budgets=[40],
        seeds=1,
        vocab_size=600,
        pretrain_minutes=2,
        pretrain_max_steps=10,
        pretrain_overrides={**tiny, "data.block_size": 32, "train.batch_size": 8, "train.progress": False},
        finetune_overrides={"train.batch_size": 16, "data.max_length": 32},
        self_train_rounds=2,
    )
    assert cfg.distill_targets == "hard"
    summary = run_study(cfg)
    assert not summary["failures"], summary["failures"]
    study = tmp_path / "study"
    test_texts = {ex["text"] for ex in json.loads(json.dumps(_test_split(study)))}
    pool = (study / "unlabeled.txt").read_text(encoding="utf-8").splitlines()
    assert len(pool) > 400 and not test_texts & set(pool)
    reg = Registry(study / "results.sqlite")
    cells = {c["arm"]: c for c in reg.cells()}
    reg.close()
    st = cells["nbsvm+self"]["metrics"]["self_training"]
    assert st["pool"] == len(pool) - 40  # the cell's own 40 labeled texts are not pseudo-labelled
    assert len(st["candidates"]) >= 4 and st["chosen"]["round"] in (0, 1, 2)
    assert cells["nbsvm+self"]["metrics"]["pseudo_labels"] == st["chosen"]["pseudo_labels"]
    d = cells["distill:nbsvm"]["metrics"]
    # the student learned from every pseudo-label of the pool, beside the gold training split
    assert d["distill_pseudo_labels"] == d["pseudo_labels"] > 300 and d["distill_targets"] == "hard"
    assert d["train_examples"] + d["dev_examples"] == 40
    assert cells["distill:nbsvm"]["trainable_params"] > 10_000  # the student is the transformer
    assert cells["nbsvm+self"]["wall_s"] > cells["nbsvm"]["wall_s"]  # its compute includes the rounds


def _test_split(study):
    from lmvalue.data.budget import carve_test
    from lmvalue.data.sources import load_labeled

    meta = json.loads((study / "study.json").read_text(encoding="utf-8"))
    pool = load_labeled(meta["config"]["data"])
    return carve_test(pool, meta["config"]["test_size"], seed=0)[1]


def test_arm_spellings():
    assert parse_arm("embeddings+self").self_train
    a = parse_arm("distill:embeddings+self")
    assert a.kind == "distill" and a.teacher.self_train and a.teacher.kind == "embeddings"
    problems = study_problems(
        StudyConfig(arms=["prompt:pet+self", "distill:", "tfidf"], self_train_fractions=[0])
    )
    assert any("+self" in p for p in problems) and any("needs a teacher" in p for p in problems)
    assert any("--self-train-fractions" in p for p in problems)


def test_soft_targets_batch_and_loss_are_the_hand_computation():
    import torch
    import torch.nn.functional as F

    from lmvalue.tasks.encode import collate, soft_cross_entropy

    gold = {"input_ids": np.array([2, 7, 3]), "labels": 1}
    pseudo = {"input_ids": np.array([2, 8, 9, 3]), "labels": 0, "soft": np.array([0.7, 0.2, 0.1], np.float32)}
    batch = collate([gold, pseudo], pad_id=0)
    assert torch.equal(batch["soft_targets"], torch.tensor([[0.0, 1.0, 0.0], [0.7, 0.2, 0.1]]))
    logits = torch.tensor([[0.5, 1.5, -1.0], [2.0, 0.0, 1.0]])
    logp = torch.log_softmax(logits, -1)
    by_hand = -(logp[0, 1] + (0.7 * logp[1, 0] + 0.2 * logp[1, 1] + 0.1 * logp[1, 2])) / 2
    assert soft_cross_entropy(logits, batch["soft_targets"]) == pytest.approx(float(by_hand), abs=1e-6)
    one_hot = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert soft_cross_entropy(logits, one_hot) == pytest.approx(
        float(F.cross_entropy(logits, torch.tensor([1, 0])))
    )
    assert "soft_targets" not in collate([gold], pad_id=0)  # plain fine-tuning is untouched
    kept = select_pseudo(
        ["a", "b"], np.array([[0.9, 0.1], [0.3, 0.7]]), ["x", "y"], np.array([0.5, 0.5]), 1.0, soft=True
    )
    assert [e["probs"] for e in kept] == [[0.9, 0.1], [0.3, 0.7]]
