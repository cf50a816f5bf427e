"""Chapter 08's date translators behind an HTTP API — chapter 14's deployment. Start it with::

    python -m book.serve --port 8000          # then open http://127.0.0.1:8000/docs

``POST /translate`` with ``{"text": "Tuesday, March 5, 2024", "target": "iso"}`` answers
``{"output": "2024-03-05", ...}``; ``GET /health`` says what is loaded; ``/docs`` is FastAPI's
Swagger UI, served from the installed ``fastapi-offline`` package (no CDN). Both models come from
the library's train-once cache (``book.translator.chapter08``; the first start trains them, with a
progress bar); ``--runtime onnx`` runs them as ONNX graphs with onnxruntime (``book.export``,
exported on first use and cached too).

Every bad request gets a 4xx answer in one JSON shape, ``{"error": "<what is wrong>", "detail":
[...]}``; texts are checked (length, characters) before they reach a model. Requests arriving
within ``max_wait_ms`` of each other are decoded together, up to ``max_batch`` at a time, in one
worker thread (``MicroBatcher``). ``background_server`` starts the server as a subprocess on a free
port and ``load_test`` measures its latency under concurrent clients (chapter 14 and the tests).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

# ----------------------------------------------------------------------------- the limits, in one place
MAX_CHARS = 64  # longest text: chapter 08's cfg.max_len, the length of its positional table
MAX_BODY_BYTES = 16_384  # larger request bodies are refused (413) before they are read
MAX_BATCH = 16  # requests decoded together at most
MAX_WAIT_MS = 2.0  # how long the first request of a batch waits for others to join it
TARGETS = ("iso", "zh")
RUNTIMES = ("torch", "onnx")
DEFAULT_RUNTIME = "onnx"  # measured: lower latency per request than "torch" on a 2-core CPU


class TranslateRequest(BaseModel):
    """A date to translate, in one of the formats of chapter 08's data set."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text": "Tuesday, March 5, 2024", "target": "iso"}]})
    text: StrictStr = Field(min_length=1, max_length=MAX_CHARS, description="the date, e.g. '5 Mar 2024'")
    target: Literal["iso", "zh"] = Field(description="'iso' (2024-03-05) or 'zh' (2024年3月5日)")


class TranslateResponse(BaseModel):
    output: str = Field(description="the translation")
    target: str
    runtime: str = Field(description="'torch' or 'onnx'")
    batch_size: int = Field(description="how many requests were decoded together with this one")
    ms: float = Field(description="time in the server, queueing included (milliseconds)")


class Health(BaseModel):
    status: str
    runtime: str
    device: str
    targets: list[str]
    max_chars: int
    max_batch: int
    max_wait_ms: float


# ----------------------------------------------------------------------------- the models
class TorchTranslator:
    """Greedy decoding in PyTorch (``book.decoding.greedy_decode``, with its key/value cache)."""

    def __init__(self, model, vocab):
        self.model, self.vocab = model.eval(), vocab
        self.device = next(model.parameters()).device

    def translate(self, texts: list[str]) -> list[str]:
        from book.decoding import greedy_decode
        from book.export import MAX_OUTPUT

        v = self.vocab
        src = v.pad_batch([v.encode(t) for t in texts]).to(self.device)  # (B, S)
        ys = greedy_decode(self.model, src, MAX_OUTPUT, v.BOS, v.EOS)  # (B, L)
        return [v.decode(row[1:]) for row in ys]


def load_translators(runtime: str = DEFAULT_RUNTIME, device: str = "cpu") -> dict:
    """{target: translator with .translate(texts)}, from the library's cache (made on first use)."""
    from book import export, translator

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime == "onnx":
        return {t: export.OnnxTranslator(export.chapter08_onnx(t)) for t in TARGETS}
    out = {}
    for target in TARGETS:
        model, vocab, _ = translator.chapter08(target, device)
        if model.cfg.max_len < MAX_CHARS:
            raise ValueError(f"the {target} model reads at most {model.cfg.max_len} characters < {MAX_CHARS}")
        out[target] = TorchTranslator(model, vocab)
    return out


# ----------------------------------------------------------------------------- batching
class MicroBatcher:
    """Collects requests for one model and decodes them together in a worker thread.

    The first request waits up to ``max_wait_ms`` for others; up to ``max_batch`` go into one greedy
    batch. ``max_batch=1`` serves them one at a time. ``submit(text)`` -> (output, batch size).
    """

    def __init__(self, translate: Callable[[list[str]], list[str]], executor, max_batch=MAX_BATCH,
                 max_wait_ms=MAX_WAIT_MS):
        self.translate, self.executor = translate, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()

    async def submit(self, text: str) -> tuple[str, int]:
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((text, done))
        return await done

    async def run(self):
        """The loop that forms batches; runs as a task for the server's lifetime."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            if self.queue.qsize() < self.max_batch - 1:  # room left: give others a moment to arrive
                await asyncio.sleep(self.max_wait)
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            texts = [text for text, _ in batch]
            try:
                outputs = await loop.run_in_executor(self.executor, self.translate, texts)
            except Exception as err:  # the requests fail (500), the server goes on
                for _, done in batch:
                    done.done() or done.set_exception(err)
                continue
            for (_, done), output in zip(batch, outputs):
                done.done() or done.set_result((output, len(batch)))


# ----------------------------------------------------------------------------- the app
def error(status: int, message: str, detail: list | None = None):
    """The one shape of every error answer: {"error": message, "detail": [...]}."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "detail": detail or []}, status_code=status)


def _validation_error(exc):
    """FastAPI's 422 (missing/extra fields, wrong types, bad JSON, ...) as one readable sentence."""
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]  # no "input": a 10 kB text is not echoed back
    parts = []
    for e, d in zip(exc.errors(), detail):
        if d["type"] == "json_invalid":  # loc: ("body", position of the error)
            reason = e.get("ctx", {}).get("error", "")
            where, why = "body", f"not valid JSON at character {d['loc'][-1]} ({reason})"
        elif d["type"] == "model_attributes_type":  # a list, a number, a string ...
            where, why = "body", 'expected a JSON object {"text": ..., "target": ...}'
        else:
            where, why = ".".join(str(p) for p in d["loc"][1:]) or "body", d["msg"]
        parts.append(f"{where}: {why}")
    return error(422, "invalid request: " + "; ".join(parts), detail)


def create_app(translators: dict | None = None, *, runtime: str = DEFAULT_RUNTIME, device: str = "cpu",
               max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS):
    """The FastAPI app. ``translators`` ({target: object with .translate(texts)}) defaults to
    ``load_translators(runtime, device)``: chapter 08's models from the cache."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi_offline import FastAPIOffline
    from starlette.exceptions import HTTPException

    from book.data.dates import CharVocab

    translators = translators or load_translators(runtime, device)
    known = set(CharVocab().itos)  # the characters both models were trained on
    executor = ThreadPoolExecutor(max_workers=1)  # one batch at a time: the model has the CPU to itself
    batchers: dict[str, MicroBatcher] = {}

    @asynccontextmanager
    async def lifespan(app):
        batchers.update({t: MicroBatcher(tr.translate, executor, max_batch, max_wait_ms)
                         for t, tr in translators.items()})
        tasks = [asyncio.create_task(b.run()) for b in batchers.values()]
        yield
        for task in tasks:
            task.cancel()
        executor.shutdown(wait=False)

    app = FastAPIOffline(title="Date translator", version="1.0", lifespan=lifespan,
                         description="Chapter 08's Transformer translates dates into ISO form or Chinese.")

    @app.middleware("http")
    async def check_body(request: Request, call_next):  # before FastAPI parses it
        size = request.headers.get("content-length", "0")
        if not size.isdigit() or int(size) > MAX_BODY_BYTES:
            return error(413, f"the request body must be at most {MAX_BODY_BYTES} bytes, got {size}")
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if request.method == "POST" and not (kind.startswith("application/") and kind.endswith("json")):
            return error(415, f"send JSON with the header content-type: application/json, not {kind!r}")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:  # sent in chunks, without a content-length
            return error(413, f"the request body must be at most {MAX_BODY_BYTES} bytes, got {len(body)}")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = err.object[err.start]
            return error(400, f"the request body is not UTF-8 text (byte {err.start} is {bad:#04x})")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, exc):
        return _validation_error(exc)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, exc):  # 404, 405, ...
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    @app.exception_handler(Exception)
    async def on_crash(request, exc):  # a bug answers 500; the server keeps running
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/health", response_model=Health)
    async def health():
        return Health(status="ok", runtime=runtime, device=str(device), targets=sorted(translators),
                      max_chars=MAX_CHARS, max_batch=max_batch, max_wait_ms=max_wait_ms)

    @app.post("/translate", response_model=TranslateResponse,
              responses={422: {"description": "invalid request: what is wrong, in `error`"}})
    async def translate(req: TranslateRequest):
        t0 = time.perf_counter()
        unknown = sorted(set(req.text) - known)
        if unknown:
            return error(422, f"invalid request: text: characters the model has never seen: {unknown}",
                         [{"loc": ["body", "text"], "msg": "unknown characters", "type": "unknown_characters",
                           "chars": unknown}])
        output, n = await batchers[req.target].submit(req.text)
        return TranslateResponse(output=output, target=req.target, runtime=runtime, batch_size=n,
                                 ms=round((time.perf_counter() - t0) * 1000, 3))

    return app


# ----------------------------------------------------------------------------- command line
EXAMPLE = """example:
  python -m book.serve --port 8000
  curl -s localhost:8000/translate -H 'content-type: application/json' \\
       -d '{"text": "Tuesday, March 5, 2024", "target": "iso"}'
  -> {"output": "2024-03-05", "target": "iso", ...}
  then open http://127.0.0.1:8000/docs"""


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, not {text!r}")
    return int(text)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value < (1 if kind is int else 0):
            raise argparse.ArgumentTypeError(f"expected a {'positive' if kind is int else 'non-negative'} "
                                             f"number, not {text!r}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    about = ("Serve chapter 08's date translators over HTTP: POST /translate, GET /health,\n"
             'OpenAPI docs at /docs. Bad requests get 4xx answers {"error": ..., "detail": [...]}.')
    p = argparse.ArgumentParser(prog="python -m book.serve", description=about, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, "
                   "reachable from this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
                   help=f"run the models in PyTorch or as ONNX graphs in onnxruntime "
                   f"(default: {DEFAULT_RUNTIME})")
    p.add_argument("--device", default=None,
                   help="PyTorch device for --runtime torch (default: cuda if present, else cpu)")
    p.add_argument("--max-batch", type=_positive(int), default=MAX_BATCH,
                   help=f"requests decoded together at most; 1 = one at a time (default: {MAX_BATCH})")
    p.add_argument("--max-wait-ms", type=_positive(float), default=MAX_WAIT_MS,
                   help=f"how long a batch waits for more requests (default: {MAX_WAIT_MS})")
    p.add_argument("--access-log", action="store_true", help="print one line per request")
    return p


def main(argv: list[str] | None = None) -> None:
    """``python -m book.serve [--host H] [--port P] [--runtime torch|onnx] ...``"""
    args = parser().parse_args(argv)
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:  # fail now, with a clear message, not after the models are loaded
            probe.bind((args.host, args.port))
        except OSError as err:
            parser().error(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}")
    import torch
    import uvicorn

    from book.runtime import device as default_device

    device = args.device or ("cpu" if args.runtime == "onnx" else str(default_device()))
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        parser().error(f"--device {device}: {str(err).splitlines()[0]}")
    if args.runtime == "onnx" and device != "cpu":
        parser().error("--runtime onnx runs on the CPU here (onnxruntime's CPU build); leave out --device")
    app = create_app(runtime=args.runtime, device=device, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms)
    print(f"serving chapter 08's translators ({args.runtime}, {device}) on http://{args.host}:{args.port}"
          f" — docs at /docs", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=args.access_log)


# ----------------------------------------------------------------------------- a server to try, a load test
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def background_server(*args: str, port: int | None = None, timeout: float = 300.0):
    """Run ``python -m book.serve --port <free port> *args`` as a subprocess; yield its URL once
    ``/health`` answers; stop it afterwards. Raises RuntimeError (with its log) if it does not come up."""
    import httpx

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    root = Path(__file__).resolve().parent.parent
    paths = [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # `book` importable from anywhere
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "book.serve", "--port", str(port), *args], cwd=root,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            start = time.perf_counter()
            while True:
                if proc.poll() is not None or time.perf_counter() - start > timeout:
                    log.seek(0)
                    raise RuntimeError(f"the server did not start (exit status {proc.poll()}):\n"
                                       f"{log.read()[-3000:]}")
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def load_test(url: str, payloads: list[dict], requests: int = 500, concurrency: int = 16,
              timeout: float = 30.0) -> dict:
    """POST ``payloads`` (in turn) to ``url`` from ``concurrency`` clients at once, ``requests`` in all.

    Returns p50_ms and p95_ms (latency of one request, as a client sees it), errors (answers other
    than 200, and failed connections), rps (requests per second) and the settings.
    """
    import httpx
    import numpy as np

    if not payloads or requests < 1 or concurrency < 1:
        raise ValueError("load_test needs at least one payload, one request and one client")
    numbers, lock = itertools.count(), threading.Lock()
    latencies, errors = [], []

    def client():
        with httpx.Client(timeout=timeout) as http:
            while (i := next(numbers)) < requests:
                t0 = time.perf_counter()
                try:
                    ok = http.post(url, json=payloads[i % len(payloads)]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    errors.append(not ok)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for job in [pool.submit(client) for _ in range(concurrency)]:
            job.result()
    seconds = time.perf_counter() - t0
    p50, p95 = np.percentile(latencies, [50, 95])
    return {"requests": requests, "concurrency": concurrency, "errors": int(sum(errors)),
            "p50_ms": float(p50), "p95_ms": float(p95), "rps": requests / seconds}


if __name__ == "__main__":
    main()
