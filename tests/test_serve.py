"""`lmvalue serve` on real tiny models: every endpoint, every error code, and batching under concurrency."""

import asyncio
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from lmvalue.config import FinetuneConfig, build_config  # noqa: E402
from lmvalue.finetuning import finetune  # noqa: E402
from lmvalue.inference import load_task_model  # noqa: E402
from lmvalue.serve import ServeSettings, create_app  # noqa: E402


def _fit(out, reviews, **over):
    cfg = {
        "data.test_size": 100,
        "data.max_length": 64,
        "budget.train_size": 300,
        "train.output_dir": str(out),
        "train.progress": False,
        **over,
    }
    finetune(build_config(FinetuneConfig, overrides=cfg), train_examples=reviews[:800])
    return out / "model"


@pytest.fixture(scope="module")
def tfidf_dir(reviews, tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("serve") / "tfidf", reviews, **{"method.name": "tfidf"})


@pytest.fixture(scope="module")
def bert_dir(reviews, char_tokenizer_dir, tmp_path_factory):
    """A tiny BERT classifier trained for 40 steps: a network model behind the batcher."""
    over = {
        "model.preset": "tiny",
        "model.hidden": 64,
        "model.heads": 2,
        "model.ffn": 128,
        "model.max_position_embeddings": 128,
        "model.from_scratch": True,
        "model.tokenizer": str(char_tokenizer_dir),
        "train.lr": 2e-3,
        "train.max_steps": 40,
        "train.min_steps": 40,
    }
    return _fit(tmp_path_factory.mktemp("serve") / "bert", reviews, **over)


def client(model_dir, **settings) -> TestClient:
    app = create_app(str(model_dir), ServeSettings(**settings), load_in_background=False)
    return TestClient(app)


def test_predict_answers_in_the_hugging_face_shape_and_matches_predict(tfidf_dir, reviews):
    texts = [r["text"] for r in reviews[900:905]]
    expected = load_task_model(tfidf_dir).predict([{"text": t} for t in texts])
    with client(tfidf_dir) as c:
        assert c.get("/health").json() == {"status": "ready"}
        info = c.get("/info").json()
        assert info["labels"] == ["neg", "pos"] and info["method"] == "tfidf" and info["lmvalue_version"]
        one = c.post("/predict", json={"inputs": texts[0]}).json()
        assert len(one) == 1 and [a["label"] for a in one[0]] == sorted(
            expected[0]["probs"], key=lambda k: -expected[0]["probs"][k]
        )
        assert one[0][0]["score"] == pytest.approx(max(expected[0]["probs"].values()), abs=1e-6)
        many = c.post("/predict", json={"inputs": texts, "parameters": {"top_k": 1}}).json()
        assert [a[0]["label"] for a in many] == [e["label"] for e in expected]
        assert all(len(a) == 1 for a in many)
        metrics = c.get("/metrics").text
        assert 'lmvalue_requests_total{code="200"} 2' in metrics and "lmvalue_batch_size_bucket" in metrics
        assert "/predict" in c.get("/openapi.json").json()["paths"]
        page = c.get("/")
        assert page.status_code == 200 and "lmvalue serve" in page.text and 'charset="utf-8"' in page.text


BAD = [
    (b"{not json", 422, "invalid_json"),
    (b"\xff\xfe\x00garbage", 422, None),
    (json.dumps({"text": "no inputs key"}).encode(), 422, "invalid_request"),
    (json.dumps({"inputs": 5}).encode(), 422, "invalid_request"),
    (json.dumps({"inputs": []}).encode(), 422, "invalid_request"),
    (json.dumps({"inputs": ["ok", 3]}).encode(), 422, "invalid_input"),
    (json.dumps({"inputs": "   "}).encode(), 422, "empty_input"),
    (json.dumps({"inputs": "好", "parameters": {"top_k": 0}}).encode(), 422, "invalid_request"),
    (json.dumps({"inputs": "好" * 2001}).encode(), 413, "input_too_long"),
    (json.dumps({"inputs": ["好"] * 10_000}).encode(), 413, "too_many_inputs"),
    (b"[1, 2, 3]", 422, "invalid_request"),
]


def test_bad_requests_get_json_errors_never_a_500_and_the_server_keeps_answering(tfidf_dir):
    with client(tfidf_dir, max_chars=2000) as c:
        for body, status, kind in BAD:
            r = c.post("/predict", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (body[:40], r.status_code, r.text)
            data = r.json()
            assert set(data) == {"error", "error_type"} and data["error"], data
            if kind:
                assert data["error_type"] == kind, (body[:40], data)
        assert c.post("/predict", json={"inputs": "质量很好"}).status_code == 200
        assert 'code="500"' not in c.get("/metrics").text


def test_a_full_queue_is_429_and_a_model_that_cannot_load_is_503(tfidf_dir, tmp_path):
    with client(tfidf_dir, max_queue=2) as c:
        r = c.post("/predict", json={"inputs": ["好", "差", "一般"]})
        assert r.status_code == 429 and r.json()["error_type"] == "queue_full"
        assert c.post("/predict", json={"inputs": ["好", "差"]}).status_code == 200
    with client(tmp_path / "no-model") as c:
        health = c.get("/health")
        assert health.status_code == 503 and "no-model" in health.json()["error"]
        assert c.post("/predict", json={"inputs": "好"}).status_code == 503


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(bert_dir, reviews):
    import httpx

    texts = [r["text"][:60] for r in reviews[900:940]]
    app = create_app(str(bert_dir), ServeSettings(max_batch=16, max_wait_ms=50), load_in_background=False)

    async def run():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                alone = [(await c.post("/predict", json={"inputs": t})).json()[0] for t in texts[:5]]
                together = await asyncio.gather(*(c.post("/predict", json={"inputs": t}) for t in texts))
                metrics = (await c.get("/metrics")).text
        return alone, [r.json()[0] for r in together], metrics

    alone, together, metrics = asyncio.run(run())
    expected = load_task_model(bert_dir).predict([{"text": t} for t in texts])
    for got, exp in zip(together, expected, strict=True):  # each request its own answer
        assert got[0]["label"] == exp["label"]
        assert got[0]["score"] == pytest.approx(exp["probs"][exp["label"]], abs=1e-4)
    for a, b in zip(alone, together[:5], strict=True):
        assert [x["label"] for x in a] == [x["label"] for x in b]
    lines = [line for line in metrics.splitlines() if line.startswith("lmvalue_batch_size_count")]
    batches = int(lines[0].split()[-1])
    assert batches < 5 + len(texts), metrics  # 40 concurrent requests shared model calls


def test_log_inputs_writes_what_the_model_saw(tfidf_dir, tmp_path):
    log = tmp_path / "seen.jsonl"
    with client(tfidf_dir, log_inputs=str(log)) as c:
        c.post("/predict", json={"inputs": ["物流很快", "太差了"]})
        c.post("/predict", json={"inputs": ""})  # refused: not logged
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["物流很快", "太差了"]
    assert all(r["prediction"][0]["label"] in ("pos", "neg") and r["time"] for r in rows)


@pytest.fixture(scope="module")
def ner_dir(reviews, char_tokenizer_dir, tmp_path_factory):
    """A tiny character tagger that learns to find two city names (B-LOC I-LOC) inside reviews."""
    import random

    rng = random.Random(0)
    rows = []
    for r in reviews[:600]:
        text = [c for c in r["text"][:30] if not c.isspace()]
        city = rng.choice(["北京", "上海"])
        at = rng.randrange(len(text) + 1)
        tokens = text[:at] + list(city) + text[at:]
        tags = ["O"] * at + ["B-LOC", "I-LOC"] + ["O"] * (len(text) - at)
        rows.append({"tokens": tokens, "tags": tags})
    data = tmp_path_factory.mktemp("serve") / "ner.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    over = {
        "data.source": str(data),  # tokens/tags JSON Lines: tagging without task.kind
        "data.test_size": 100,
        "data.max_length": 64,
        "train.output_dir": str(data.parent / "run"),
        "train.progress": False,
        "model.preset": "tiny",
        "model.hidden": 64,
        "model.heads": 2,
        "model.ffn": 128,
        "model.max_position_embeddings": 128,
        "model.from_scratch": True,
        "model.tokenizer": str(char_tokenizer_dir),
        "train.lr": 3e-3,
        "train.max_steps": 150,
        "train.min_steps": 150,
    }
    m = finetune(build_config(FinetuneConfig, overrides=over))
    assert m["task"] == "tagging" and m["test"]["entity_f1"] > 0.8, m["test"]
    return data.parent / "run" / "model"


def test_tagging_answers_entity_groups_with_character_offsets(ner_dir):
    text = "这次去 北京出差，酒店不错"
    with client(ner_dir) as c:
        assert c.get("/info").json()["level"] == "token"
        (groups,) = c.post("/predict", json={"inputs": [text]}).json()
    assert groups, groups
    for g in groups:
        assert set(g) == {"entity_group", "score", "word", "start", "end"} and 0 < g["score"] <= 1
        assert text[g["start"] : g["end"]] == g["word"]  # offsets index the input as sent (space included)
    assert {"entity_group": "LOC", "word": "北京", "start": 4, "end": 6} in [
        {k: g[k] for k in ("entity_group", "word", "start", "end")} for g in groups
    ]


def test_the_page_predicts_in_a_real_browser(tfidf_dir, tmp_path, chromium):
    """A live server on a free port; headless Chromium opens /?text=..., which predicts on load: the DOM
    shows the Chinese texts and one probability bar per label, and a screenshot is written."""
    import socket
    import subprocess
    import threading
    import time
    import urllib.parse
    import urllib.request

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(str(tfidf_dir), ServeSettings())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode(
            {"text": "物流很快，质量不错\n太差了，不推荐"}
        )
        common = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--virtual-time-budget=10000",
        ]
        dom = subprocess.run(
            [*common, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        shot = tmp_path / "page.png"
        subprocess.run(
            [
                *common,
                f"--user-data-dir={tmp_path / 'p2'}",
                "--window-size=900,700",
                f"--screenshot={shot}",
                url,
            ],
            capture_output=True,
            timeout=120,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    import re

    body = re.sub(r"<script>.*?</script>", "", dom, flags=re.S)  # what is rendered, not the page's code
    assert 'data-done="1"' in body, body[-2000:]
    assert "物流很快，质量不错" in body and "太差了，不推荐" in body
    assert body.count('class="pred"') == 4 and body.count('class="bar"') == 4  # 2 texts x 2 labels
    assert shot.is_file() and shot.stat().st_size > 5000


def test_serve_runs_inference_on_the_cores_it_may_use(tfidf_dir, monkeypatch):
    import os

    import uvicorn

    import lmvalue.serve as S

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    S.serve(str(tfidf_dir))
    cores = len(os.sched_getaffinity(0))
    assert seen["app"].state.server.settings.threads == cores == S.default_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # a container limited to 3 cores
    S.serve(str(tfidf_dir))
    assert seen["app"].state.server.settings.threads == 3
    assert seen["host"] == "127.0.0.1"  # loopback unless told otherwise
    S.serve(str(tfidf_dir), settings=ServeSettings(threads=3))
    assert seen["app"].state.server.settings.threads == 3  # an explicit --threads wins
