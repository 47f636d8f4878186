"""`lmvalue serve`: a fine-tuned model over HTTP (FastAPI + uvicorn).

``POST /predict`` takes the Hugging Face inference shape, ``{"inputs": "text" | ["t1", ...] |
[["a", "b"], ...], "parameters": {"top_k": N}}``, and answers per input ``[{"label", "score"}, ...]``
(best first), or for tagging models entity groups ``{"entity_group", "score", "word", "start", "end"}``
with character offsets into the input. Concurrent requests are coalesced into batches (``max_batch``
inputs, waiting at most ``max_wait_ms`` for more) run by one inference worker thread, and every request
gets its own answers back. ``GET /health`` (200 ready, 503 loading), ``/info``, ``/metrics``
(Prometheus text), ``/`` (a page to try the model), ``/docs`` (OpenAPI).

Bad requests get JSON ``{"error", "error_type"}`` with 422 (malformed, wrong types, empty), 413 (too many
inputs, too long a text), 429 (queue full) or 503 (not ready): never a 500, never a dead server.
"""

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

log = logging.getLogger("lmvalue")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ServeSettings:
    max_batch: int = 32  # inputs per model call
    max_wait_ms: float = 5.0  # how long the worker waits to fill a batch
    max_inputs: int = 256  # inputs per request (413 above)
    max_chars: int = 10_000  # characters per input (413 above)
    max_queue: int = 4096  # inputs waiting (429 above)
    log_inputs: str | None = None  # JSON Lines of time, input, prediction (opt-in)
    threads: int | None = None  # torch threads of inference (None: torch's default; `serve`: every core)
    trust_pickle: bool = False


def default_threads() -> int:
    """torch threads for inference: every core this process may use (its CPU affinity, which torch's own
    default ignores in a container). Measured on 2 cores (docs/serving.md): 2 threads beat 1 for a tiny BERT
    (797 against ~500 texts/s) and for MiniLM (84 against 44); the event loop's share is small once requests
    are batched."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _histogram(name: str, help_: str, buckets, values: list[float]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    for b in buckets:
        lines.append(f'{name}_bucket{{le="{b}"}} {sum(v <= b for v in values)}')
    lines += [
        f'{name}_bucket{{le="+Inf"}} {len(values)}',
        f"{name}_sum {sum(values):.6f}",
        f"{name}_count {len(values)}",
    ]
    return lines


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.codes: Counter = Counter()
        self.latencies: list[float] = []  # bounded below
        self.batches: list[float] = []

    def request(self, code: int, seconds: float) -> None:
        with self.lock:
            self.codes[code] += 1
            self.latencies.append(seconds)
            del self.latencies[:-100_000]

    def batch(self, size: int) -> None:
        with self.lock:
            self.batches.append(size)
            del self.batches[:-100_000]

    def text(self) -> str:
        with self.lock:
            lines = [
                "# HELP lmvalue_requests_total Requests to /predict by status code.",
                "# TYPE lmvalue_requests_total counter",
            ]
            lines += [f'lmvalue_requests_total{{code="{c}"}} {n}' for c, n in sorted(self.codes.items())]
            lines += _histogram(
                "lmvalue_request_seconds", "Latency of /predict.", LATENCY_BUCKETS, self.latencies
            )
            lines += _histogram("lmvalue_batch_size", "Inputs per model call.", BATCH_BUCKETS, self.batches)
        return "\n".join(lines) + "\n"


class Batcher:
    """Coalesces the inputs of concurrent requests into batches for one inference thread."""

    def __init__(self, task, settings: ServeSettings, metrics: Metrics):
        self.task, self.settings, self.metrics = task, settings, metrics
        self.queue: asyncio.Queue | None = None
        self.pending = 0
        self.worker: asyncio.Task | None = None
        self.lock = threading.Lock()  # one model call at a time

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.worker is not None:
            while self.pending:  # graceful: answer what was accepted
                await asyncio.sleep(0.01)
            self.worker.cancel()

    async def submit(self, examples: list[dict]) -> list:
        if self.pending + len(examples) > self.settings.max_queue:
            raise RequestError(
                429, f"the queue is full ({self.pending} inputs waiting); retry shortly", "queue_full"
            )
        loop = asyncio.get_running_loop()
        futures = []
        self.pending += len(examples)
        for ex in examples:
            fut = loop.create_future()
            futures.append(fut)
            self.queue.put_nowait((ex, fut))
        return await asyncio.gather(*futures)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.settings.max_wait_ms / 1000
            while len(items) < self.settings.max_batch:
                if not self.queue.empty():  # what is already waiting, without a timer
                    items.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            examples = [ex for ex, _ in items]
            order = sorted(range(len(examples)), key=lambda i: _length(examples[i]))  # less padding
            try:
                outputs = await loop.run_in_executor(None, self._predict, [examples[i] for i in order])
                results = [None] * len(examples)
                for i, out in zip(order, outputs, strict=True):
                    results[i] = out
                for (_, fut), out in zip(items, results, strict=True):
                    if not fut.done():
                        fut.set_result(out)
            except Exception as e:  # the model failed on this batch: its requests get a 500, the server lives
                log.exception("prediction failed")
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
            finally:
                self.pending -= len(items)
                self.metrics.batch(len(items))

    def _predict(self, examples: list[dict]) -> list:
        with self.lock:
            outputs = self.task.outputs(examples)  # one forward pass for the labels and the scores
            return list(zip(self.task.predict(examples, outputs), outputs, strict=True))


def _length(ex: dict) -> int:
    return len(ex.get("text", "")) + len(ex.get("text_pair", "")) + len(ex.get("tokens", []))


def _tokens_with_offsets(text: str, char_tokens: bool) -> tuple[list[str], list[tuple[int, int]]]:
    pattern = r"\S" if char_tokens else r"\S+"
    found = [(m.group(), (m.start(), m.end())) for m in re.finditer(pattern, text)]
    return [t for t, _ in found], [o for _, o in found]


class Server:
    """The model, its settings and the request handling, independent of the HTTP framework."""

    def __init__(self, model_path: str, settings: ServeSettings, task=None):
        self.model_path, self.settings = model_path, settings
        self.task = task  # already loaded (lmvalue serve checks the folder before binding), or None
        self.error: str | None = None
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.info: dict = {}
        self._log = None
        self._log_lock = threading.Lock()

    def load(self) -> None:
        from lmvalue import __version__
        from lmvalue.inference import load_task_model

        if self.settings.threads:
            import torch

            torch.set_num_threads(self.settings.threads)
        from lmvalue.versions import is_registry, resolve_model

        try:
            # a registry is resolved once, here: the version loaded is the version /info names
            self.model_path = str(resolve_model(self.model_path))
            if self.task is None:
                self.task = load_task_model(self.model_path, trust_pickle=self.settings.trust_pickle)
        except Exception as e:  # shown by /health and /info; the server keeps answering
            self.error = str(e)
            log.error("cannot load %s: %s", self.model_path, e)
            return
        folder = Path(self.model_path)
        method = {}
        for candidate in (folder / "lmvalue_method.json", folder / "model" / "lmvalue_method.json"):
            if candidate.is_file():
                method = json.loads(candidate.read_text(encoding="utf-8"))
                break
        spec = self.task.spec
        self.info = {
            "model": str(self.model_path),
            "task": spec.kind,
            "level": spec.level,
            "labels": list(spec.labels),
            "method": method.get("name", "full"),
            "lmvalue_version": __version__,
            "limits": asdict(self.settings) | {"log_inputs": bool(self.settings.log_inputs)},
        }
        if is_registry(folder.parent):  # a version of a model registry
            self.info.update(registry=str(folder.parent), version=folder.name)
        if self.settings.log_inputs:
            self._log = open(self.settings.log_inputs, "a", encoding="utf-8")  # noqa: SIM115 - closed on shutdown

    @property
    def ready(self) -> bool:
        return self.task is not None and self.batcher is not None

    def parse(self, body: bytes) -> tuple[list[dict], list[str], list, int | None]:
        """Examples, the raw input texts, the tokens' character offsets (tagging; else None) and top_k of
        a request body; RequestError when it is bad."""
        s = self.settings
        try:
            data = json.loads(body)
        except UnicodeDecodeError:
            raise RequestError(422, "the request body is not UTF-8 text", "invalid_encoding") from None
        except ValueError as e:
            raise RequestError(422, f"the request body is not valid JSON ({e})", "invalid_json") from None
        if not isinstance(data, dict) or "inputs" not in data:
            raise RequestError(
                422, 'send a JSON object {"inputs": "text" or ["text", ...]}', "invalid_request"
            )
        inputs, params = data["inputs"], data.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(422, '"parameters" must be an object, e.g. {"top_k": 2}', "invalid_request")
        top_k = params.get("top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise RequestError(422, '"top_k" must be a positive integer', "invalid_request")
        single = isinstance(inputs, str)
        items = [inputs] if single else inputs
        if not isinstance(items, list) or not items:
            raise RequestError(
                422, '"inputs" must be a non-empty string or a non-empty list', "invalid_request"
            )
        if len(items) > s.max_inputs:
            raise RequestError(
                413, f"{len(items)} inputs in one request; at most {s.max_inputs}", "too_many_inputs"
            )
        pair = self.task.spec.kind == "pair"
        examples, texts, offsets = [], [], []
        for i, item in enumerate(items):
            where = "inputs" if single else f"inputs[{i}]"
            if pair:
                if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                    raise RequestError(
                        422,
                        f'{where}: this model reads sentence pairs: ["text", "text_pair"]',
                        "invalid_input",
                    )
                text, text_pair = item
            elif isinstance(item, str):
                text, text_pair = item, None
            else:
                raise RequestError(
                    422, f"{where}: expected a string, got {type(item).__name__}", "invalid_input"
                )
            if not text.strip():
                raise RequestError(422, f"{where}: empty text", "empty_input")
            if len(text) + len(text_pair or "") > s.max_chars:
                raise RequestError(
                    413,
                    f"{where}: {len(text) + len(text_pair or ''):,} characters; at most {s.max_chars:,}",
                    "input_too_long",
                )
            where_tokens = None
            if self.task.spec.level == "token":
                tokens, where_tokens = _tokens_with_offsets(text, self.task.spec.char_tokens)
                examples.append({"tokens": tokens})
            elif pair:
                examples.append({"text": text, "text_pair": text_pair})
            else:
                examples.append({"text": text})
            texts.append(text)
            offsets.append(where_tokens)
        return examples, texts, offsets, top_k

    def answer(
        self, text: str, example: dict, offsets: list | None, pred: dict, probs: np.ndarray, top_k: int | None
    ) -> list[dict]:
        spec = self.task.spec
        if spec.level != "token":
            ranked = sorted(pred["probs"].items(), key=lambda kv: -kv[1])
            return [{"label": k, "score": round(float(v), 6)} for k, v in ranked[: top_k or len(ranked)]]
        from lmvalue.tasks.metrics import spans

        out = []
        for span in spans(example["tokens"], pred["tags"], joiner="" if spec.char_tokens else " "):
            start, end = offsets[span["start"]][0], offsets[span["end"] - 1][1]
            rows = probs[span["start"] : span["end"]]
            score = float(np.nanmean(np.nanmax(rows, axis=1))) if len(rows) else 0.0
            out.append(
                {
                    "entity_group": span["type"],
                    "score": round(score, 6),
                    "word": text[start:end],
                    "start": start,
                    "end": end,
                }
            )
        return out

    def record(self, texts: list[str], answers: list) -> None:
        if self._log is None:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self._log_lock:
            for text, ans in zip(texts, answers, strict=True):
                self._log.write(
                    json.dumps({"time": now, "text": text, "prediction": ans}, ensure_ascii=False) + "\n"
                )
            self._log.flush()


PAGE = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>lmvalue serve</title>
<style>body{font-family:system-ui,"Noto Sans CJK SC","PingFang SC",sans-serif;max-width:760px;margin:2em auto;padding:0 1em}
textarea{width:100%;height:7em;font-size:1em}.row{margin:1em 0}.bar{background:#4a7bd0;height:1em;display:inline-block}
.lab{display:inline-block;min-width:8em}.ent{background:#ffe08a;border-radius:3px;padding:0 2px}.ent sub{color:#875}</style></head>
<body><h1>lmvalue serve</h1><p id="info"></p>
<textarea id="text" placeholder="one text per line / 每行一条">这家店的物流很快，质量也不错</textarea>
<p><button id="go">Predict</button></p><div id="out"></div>
<script>
const esc = s => s.replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
fetch('info').then(r => r.json()).then(i => {document.getElementById('info').textContent =
  `${i.task} model (${i.method}), labels: ${(i.labels||[]).join(', ')}`; window.INFO = i;});
document.getElementById('go').onclick = async () => {
  const lines = document.getElementById('text').value.split('\\n').filter(l => l.trim());
  const r = await fetch('predict', {method:'POST', headers:{'Content-Type':'application/json'}, body: JSON.stringify({inputs: lines})});
  const data = await r.json(); const out = document.getElementById('out'); out.innerHTML = '';
  if (!r.ok) { out.textContent = data.error; return; }
  data.forEach((ans, i) => {
    const div = document.createElement('div'); div.className = 'row';
    if (window.INFO && window.INFO.level === 'token') {
      let t = lines[i], html = '', at = 0;
      ans.forEach(e => { html += esc(t.slice(at, e.start)) + `<span class="ent">${esc(e.word)}<sub>${esc(e.entity_group)}</sub></span>`; at = e.end; });
      div.innerHTML = html + esc(t.slice(at));
    } else {
      div.innerHTML = `<div>${esc(lines[i])}</div>` + ans.map(a =>
        `<div class="pred"><span class="lab">${esc(a.label)}</span><span class="bar" style="width:${Math.round(a.score*300)}px"></span> ${a.score.toFixed(3)}</div>`).join('');
    }
    out.appendChild(div);
  });
  out.dataset.done = '1';
};
const q = new URLSearchParams(location.search).get('text');  // /?text=...: fill in and predict
if (q) { document.getElementById('text').value = q; document.getElementById('go').click(); }
</script></body></html>
"""


def create_app(
    model_path: str, settings: ServeSettings | None = None, *, load_in_background: bool = True, task=None
):
    """The ASGI app serving ``model_path`` (mountable in another FastAPI app); ``task``: the model already
    loaded from it (:func:`lmvalue.inference.load_task_model`), so that it is not loaded twice."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

    server = Server(model_path, settings or ServeSettings(), task)

    @asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        loading = loop.run_in_executor(None, server.load)
        if not load_in_background:
            await loading

        async def start_batcher():
            await loading
            if server.task is not None:
                batcher = Batcher(server.task, server.settings, server.metrics)
                batcher.start()
                server.batcher = batcher

        starter = loop.create_task(start_batcher())
        if not load_in_background:
            await starter
        yield
        if server.batcher is not None:
            await server.batcher.stop()
        if server._log is not None:
            server._log.close()

    app = FastAPI(title="lmvalue serve", lifespan=lifespan)
    app.state.server = server

    def error(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": message, "error_type": kind}, status_code=status)

    @app.post("/predict")
    async def predict(request: Request):
        t0 = time.perf_counter()
        try:
            if not server.ready:
                raise RequestError(
                    503, server.error or "the model is still loading; retry shortly", "not_ready"
                )
            body = await request.body()
            examples, texts, offsets, top_k = server.parse(body)
            outputs = await server.batcher.submit(examples)
            answers = [
                server.answer(text, ex, where, pred, probs, top_k)
                for text, ex, where, (pred, probs) in zip(texts, examples, offsets, outputs, strict=True)
            ]
            server.record(texts, answers)
            response = JSONResponse(answers)
        except RequestError as e:
            response = error(e.status, e.message, e.kind)
        except Exception as e:  # a model failure, not the request's fault
            log.exception("predict failed")
            response = error(500, f"prediction failed: {type(e).__name__}", "internal")
        server.metrics.request(response.status_code, time.perf_counter() - t0)
        return response

    @app.get("/health")
    async def health():
        if server.ready:
            return {"status": "ready"}
        return error(503, server.error or "loading", "not_ready")

    @app.get("/info")
    async def info():
        if not server.ready:
            return error(503, server.error or "loading", "not_ready")
        return server.info

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(server.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        return error(422, "invalid request", "invalid_request")

    return app


def serve(
    model_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    access_log: bool = False,
    task=None,
) -> None:
    """Run the server until interrupted (Ctrl-C finishes the requests in flight). ``access_log``: one log
    line per request (off: it costs more than a tiny model's forward pass; /metrics counts requests).

    Without ``settings.threads``, inference gets every core this process may use (:func:`default_threads`)."""
    import uvicorn

    settings = settings or ServeSettings()
    if settings.threads is None:
        settings = replace(settings, threads=default_threads())

    uvicorn.run(
        create_app(model_path, settings, task=task),
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
    )
