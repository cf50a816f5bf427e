"""book.serve and book.export — chapter 14's deployment of chapter 08's translators, tested for real.

The server runs as a subprocess (``python -m book.serve`` on a free local port, started once for the
module) and is called over HTTP: answers on held-out dates, every kind of bad input, the offline
docs, and a bounded load test. The ONNX export is checked against PyTorch (logits and strings).
"""
from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from book import export, serve, translator
from book.data.dates import examples, split_dates

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server():
    with serve.background_server(timeout=600) as url:  # the default runtime; a cold cache trains first
        yield url


@pytest.fixture(scope="module")
def held_out():
    """20 (source, target) pairs per target from dates no model saw in training."""
    split = split_dates(seed=0, test_fraction=0.1)
    return {t: examples(split.test[-20:], t, seed=11) for t in serve.TARGETS}


def post(url, **kwargs):
    return httpx.post(url + "/translate", timeout=30, **kwargs)


# ----------------------------------------------------------------------------- answers
def test_health_says_what_is_served(server):
    r = httpx.get(server + "/health", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["targets"] == ["iso", "zh"]
    assert body["runtime"] == serve.DEFAULT_RUNTIME and body["max_chars"] == serve.MAX_CHARS


def test_the_documented_example(server):
    iso = post(server, json={"text": "Tuesday, March 5, 2024", "target": "iso"})
    zh = post(server, json={"text": "Tuesday, March 5, 2024", "target": "zh"})
    assert iso.status_code == zh.status_code == 200
    assert iso.json()["output"] == "2024-03-05"
    assert zh.json()["output"] == "2024年3月5日星期二"
    assert set(iso.json()) == {"output", "target", "runtime", "batch_size", "ms"}


@pytest.mark.parametrize("target", serve.TARGETS)
def test_held_out_dates_are_translated_as_in_process(server, held_out, target):
    """One request at a time: the server's answers are the in-process translator's, and mostly right."""
    pairs = held_out[target]
    answers = [post(server, json={"text": s, "target": target}) for s, _ in pairs]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    outputs = [a.json()["output"] for a in answers]
    local = serve.load_translators(serve.DEFAULT_RUNTIME)[target]
    assert outputs == [local.translate([s])[0] for s, _ in pairs]
    right = sum(o == t for o, (_, t) in zip(outputs, pairs))
    assert right >= 18, f"only {right}/20 held-out dates right: {list(zip(outputs, pairs))}"


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, held_out):
    pairs = held_out["iso"][:16]
    start = threading.Barrier(len(pairs))

    def ask(pair):
        with httpx.Client(base_url=server, timeout=30) as client:
            client.get("/health")  # connected: now all send at once
            start.wait()
            return client.post("/translate", json={"text": pair[0], "target": "iso"}).json()

    with ThreadPoolExecutor(len(pairs)) as pool:
        answers = list(pool.map(ask, pairs))
    alone = [post(server, json={"text": s, "target": "iso"}).json()["output"] for s, _ in pairs]
    assert [a["output"] for a in answers] == alone  # nobody got a neighbour's translation
    assert max(a["batch_size"] for a in answers) > 1


def test_torch_runtime_one_request_at_a_time(held_out):
    """The other runtime and the unbatched mode, from the command line: same answers, batches of one."""
    pairs = held_out["zh"][:8]
    with serve.background_server("--runtime", "torch", "--device", "cpu", "--max-batch", "1") as url:
        health = httpx.get(url + "/health", timeout=10).json()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda p: post(url, json={"text": p[0], "target": "zh"}).json(), pairs))
    assert health["runtime"] == "torch" and health["max_batch"] == 1
    assert all(a["batch_size"] == 1 and a["runtime"] == "torch" for a in answers)
    local = serve.load_translators("torch", "cpu")["zh"]
    assert [a["output"] for a in answers] == local.translate([s for s, _ in pairs])


# ---------------------------------------------------------------- bad input: a 4xx JSON error, never a crash
JSON = {"content-type": "application/json"}
BAD = {  # name: (request arguments, status, words the error message must contain)
    "missing text": (dict(json={"target": "iso"}), 422, ["text", "required"]),
    "missing target": (dict(json={"text": "5 Mar 2024"}), 422, ["target", "required"]),
    "extra field": (dict(json={"text": "5 Mar 2024", "target": "iso", "lang": "en"}), 422, ["lang", "extra"]),
    "text is a number": (dict(json={"text": 20240305, "target": "iso"}), 422, ["text", "string"]),
    "text is null": (dict(json={"text": None, "target": "iso"}), 422, ["text", "string"]),
    "target is a list": (dict(json={"text": "5 Mar 2024", "target": ["iso"]}), 422, ["target"]),
    "empty text": (dict(json={"text": "", "target": "iso"}), 422, ["text", "at least 1"]),
    "65 characters": (dict(json={"text": "5" * 65, "target": "iso"}), 422, ["text", "at most 64"]),
    "10 kB text": (dict(json={"text": "5" * 10_000, "target": "iso"}), 422, ["text", "at most 64"]),
    "100 kB body": (dict(json={"text": "5" * 100_000, "target": "iso"}), 413, ["at most", "bytes"]),
    "100 kB in chunks": (dict(content=iter([b'{"text": "' + b"5" * 100_000, b'", "target": "iso"}']), headers=JSON),
                         413, ["at most", "bytes"]),  # no content-length header
    "unknown target": (dict(json={"text": "5 Mar 2024", "target": "fr"}), 422, ["target", "'iso' or 'zh'"]),
    "unknown characters": (dict(json={"text": "5 März 2024 €", "target": "iso"}), 422, ["never seen", "ä", "€"]),
    "not UTF-8": (dict(content=b'{"text": "5 M\xe4r 2024", "target": "iso"}',
                       headers=JSON), 400, ["UTF-8", "0xe4"]),
    "malformed JSON": (dict(content=b'{"text": "5 Mar 2024", "target": ', headers=JSON),
                       422, ["JSON"]),
    "a JSON list": (dict(json=[{"text": "5 Mar 2024", "target": "iso"}]), 422, ["JSON object"]),
    "no body": (dict(), 422, ["body", "required"]),
    "form instead of JSON": (dict(data={"text": "5 Mar 2024", "target": "iso"}), 415, ["content-type", "json"]),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_gets_a_clear_json_error(server, name):
    kwargs, status, words = BAD[name]
    r = post(server, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str) and isinstance(body["detail"], list)
    for word in words:
        assert word.lower() in body["error"].lower(), (word, body["error"])
    assert len(r.content) < 2000  # a 10 kB text is not echoed back
    assert httpx.get(server + "/health", timeout=10).status_code == 200  # still up


def test_wrong_paths_and_methods_answer_in_the_same_shape(server):
    for r, status in ((httpx.get(server + "/nowhere"), 404), (httpx.get(server + "/translate"), 405)):
        assert r.status_code == status and set(r.json()) == {"error", "detail"}


def test_docs_are_served_offline(server):
    html = httpx.get(server + "/docs", timeout=10)
    assert html.status_code == 200 and "swagger-ui" in html.text.lower()
    assert not re.search(r"https?://", html.text), "the docs page must not load anything from another host"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text) + re.findall(r"url: '([^']+)'", html.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert httpx.get(server + asset, timeout=10).status_code == 200, asset
    schema = httpx.get(server + "/openapi.json", timeout=10).json()
    assert {"/translate", "/health"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["TranslateRequest"]
    assert request["additionalProperties"] is False and request["properties"]["text"]["maxLength"] == 64


# ----------------------------------------------------------------------------- load
def test_load_500_requests_16_concurrent_without_errors(server, held_out, record_property):
    payloads = [{"text": s, "target": t} for t, pairs in held_out.items() for s, _ in pairs]
    stats = serve.load_test(server + "/translate", payloads, requests=500, concurrency=16)
    print(f"\nload test: {stats}")
    for key in ("p50_ms", "p95_ms", "rps", "errors"):
        record_property(key, stats[key])
    assert stats["errors"] == 0
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] < 10_000 and stats["rps"] > 0


def test_load_test_counts_failed_requests(server):
    stats = serve.load_test(server + "/translate", [{"text": "", "target": "iso"}], requests=20, concurrency=4)
    assert stats["errors"] == 20 and stats["requests"] == 20
    with pytest.raises(ValueError):
        serve.load_test(server + "/translate", [], requests=5)


# ----------------------------------------------------------------------------- the batcher, in-process
@pytest.mark.parametrize("max_batch, want", [(16, [10]), (4, [4, 4, 2]), (1, [1] * 10)])
def test_micro_batcher_groups_requests(max_batch, want):
    sizes = []

    def translate(texts):
        sizes.append(len(texts))
        return [t[::-1] for t in texts]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = serve.MicroBatcher(translate, pool, max_batch=max_batch, max_wait_ms=20)
            task = asyncio.create_task(batcher.run())
            out = await asyncio.gather(*(batcher.submit(f"date {i}") for i in range(10)))
            task.cancel()
            return out

    out = asyncio.run(main())
    assert [o for o, _ in out] == [f"date {i}"[::-1] for i in range(10)]
    assert sizes == want and [n for _, n in out] == [n for n in want for _ in range(n)]


def test_a_failing_model_fails_its_requests_not_the_batcher():
    calls = []

    def translate(texts):
        calls.append(texts)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return texts

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = serve.MicroBatcher(translate, pool, max_wait_ms=0)
            task = asyncio.create_task(batcher.run())
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit("first")
            again = await batcher.submit("second")
            task.cancel()
            return again

    assert asyncio.run(main()) == ("second", 1)


# ----------------------------------------------------------------------------- command line
def test_help_documents_the_command():
    run = subprocess.run([sys.executable, "-m", "book.serve", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0
    for option in ("--port", "--host", "--runtime", "--max-batch", "127.0.0.1", "/translate", "/docs"):
        assert option in run.stdout


@pytest.mark.parametrize("argv, words", [
    (["--port", "70000"], ["1 to 65535", "70000"]),
    (["--port", "http"], ["1 to 65535", "http"]),
    (["--runtime", "tensorflow"], ["invalid choice", "tensorflow"]),
    (["--max-batch", "0"], ["positive"]),
    (["--max-wait-ms", "soon"], ["non-negative"]),
])
def test_bad_arguments_give_a_clear_error(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        serve.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_a_busy_port_is_refused_before_loading_models(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit):
            serve.main(["--port", str(port)])
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_unknown_runtime_in_python():
    with pytest.raises(ValueError, match="runtime"):
        serve.load_translators("tensorflow")


# ----------------------------------------------------------------------------- the ONNX export
@pytest.fixture(scope="module")
def onnx_translators():
    return {t: export.OnnxTranslator(export.chapter08_onnx(t)) for t in serve.TARGETS}


@pytest.mark.parametrize("target", serve.TARGETS)
def test_onnx_matches_pytorch_on_held_out_dates(onnx_translators, target):
    model, vocab, split = translator.chapter08(target, "cpu")
    pairs = examples(split.test[:100], target, seed=3)
    result = export.compare_with_torch(model, onnx_translators[target], vocab, [s for s, _ in pairs])
    assert result["max_abs_diff"] < 1e-4  # every next-token logit along PyTorch's greedy outputs
    assert result["onnx"] == result["torch"] and result["same_strings"] == 1.0
    assert sum(o == t for o, (_, t) in zip(result["onnx"], pairs)) >= 95  # and they are translations


def test_onnx_graphs_take_any_batch_and_length_up_to_max_len(onnx_translators):
    import torch

    model, vocab, _ = translator.chapter08("iso", "cpu")
    ox = onnx_translators["iso"]
    texts = ["5 Mar 2024", "Tuesday, March 5, 2024" + " " * 42, "1"]  # 10, 64 and 1 characters
    src = ox.encode(texts)
    assert src.shape == (3, 64)
    for batch in (src[:1, :10], src[2:, :1], src):  # (1, 10), (1, 1), (3, 64)
        states = ox.encoder.run(None, {"src": batch})[0]
        with torch.no_grad():
            want = model.encode(torch.from_numpy(batch))[0].numpy()
        assert states.shape == want.shape and np.abs(states - want).max() < 1e-4


def test_onnx_translator_rejects_what_it_cannot_read(onnx_translators):
    ox = onnx_translators["iso"]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        ox.translate(["5 März 2024"])
    with pytest.raises(ValueError, match="length 65"):
        ox.translate(["5" * 65])


def test_the_export_is_cached_and_not_repeated(onnx_translators, monkeypatch):
    folder = export.chapter08_onnx("iso")
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert {"encoder.onnx", "decoder.onnx", "vocab.json"} <= set(stamps)
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    assert export.chapter08_onnx("iso") == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
