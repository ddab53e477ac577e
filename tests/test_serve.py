"""``peft-tags serve``: runs sharing one backbone, micro-batches, limits, metrics, shutdown."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import write_recipe
from helpers import child_env, cli_fails
from peft_tags.cli import main as cli_main

pytest.importorskip("fastapi")
TITLES = ["华为黑色手机壳", "小米白色保护套硅胶", "得力 金属支架2024新款", "黑", "白色硅胶壳"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_backbone, toy_tags):
    """Two LoRA runs on one backbone (a tagging and a multi-label one) and an IA3 run."""
    tmp = tmp_path_factory.mktemp("serve")
    specs = {"spans": ("lora", None), "tags": ("lora", {"type": "multilabel"}), "ia3": ("ia3", None)}
    for name, (method, task) in specs.items():
        recipe = write_recipe(tmp / f"{name}.yaml", tiny_backbone, toy_tags, tmp / name, method=method,
                              task_options=task, epochs=2, lr=1e-2)
        assert cli_main(["train", str(recipe)]) == 0
    return tmp


class Server:
    """The app on a real uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                break
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.url)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def call(url: str, path: str, body=None, raw: bytes | None = None, timeout: float = 60):
    """(status, headers, JSON or text) of a request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, headers, text = r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        status, headers, text = e.code, dict(e.headers), e.read().decode()
    try:
        return status, headers, json.loads(text)
    except json.JSONDecodeError:
        return status, headers, text


def wait_ready(url: str, seconds: float = 120) -> None:
    end = time.time() + seconds
    while time.time() < end:
        try:
            if call(url, "/readyz", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {seconds} s")


@pytest.fixture(scope="module")
def service(runs):
    from peft_tags.serve.app import Limits, create_app
    from peft_tags.serve.models import load_runs, parse_run_args

    items = parse_run_args([str(runs / "spans"), f"tags={runs / 'tags'}", str(runs / "ia3"), f"spans.v2={runs / 'spans'}"])
    app = create_app(lambda: load_runs(items), Limits(max_titles=8, max_chars=40, max_batch=16, max_wait_ms=20))
    with Server(app) as s:
        yield s


def test_runs_on_one_backbone_share_it_and_answer_like_tagger(runs, service):
    from peft_tags.predict import Tagger

    status, _, body = call(service.url, "/v1/models")
    assert status == 200
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"spans", "tags", "ia3", "spans.v2"}  # a '.' in a name is fine
    assert models["spans"]["served_with"] == ["tags", "spans.v2"] and models["spans"]["shared_backbone"]
    assert models["tags"]["task"] == "multilabel" and "tags" in models["tags"]
    loaded = service.server.config.app.state.peft_tags["runs"]
    assert loaded["spans"].group is loaded["tags"].group is loaded["spans.v2"].group  # one backbone copy
    assert loaded["spans"].tagger.codec.tokenizer is loaded["tags"].tagger.codec.tokenizer  # and one tokenizer
    for name in ("spans", "tags", "ia3", "spans.v2"):
        expected = [[t.as_dict() for t in tags] for tags in Tagger.load(runs / name.replace(".v2", "")).tag(TITLES)]
        status, _, body = call(service.url, "/v1/tag", {"model": name, "titles": TITLES})
        assert status == 200, body
        got = [r["tags"] for r in body["results"]]
        assert [r["title"] for r in body["results"]] == TITLES
        strip = (lambda rows: [[{k: v for k, v in t.items() if k != "score"} for t in row] for row in rows])
        assert strip(got) == strip(expected), name
        assert all(abs(a["score"] - b["score"]) < 1e-3 for ra, rb in zip(got, expected) for a, b in zip(ra, rb))
    assert any(got for got in (r["tags"] for r in body["results"]))


def test_concurrent_requests_of_two_adapters_share_forward_passes(runs, service):
    from peft_tags.predict import Tagger

    expected = {n: [[t.as_dict()["text"] for t in tags] for tags in Tagger.load(runs / n).tag(TITLES)]
                for n in ("spans", "ia3")}
    before = _metric(service.url, "peft_tags_batch_titles_count")
    jobs = [("spans" if i % 2 else "ia3", TITLES[i % len(TITLES)], i % len(TITLES)) for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda j: call(service.url, "/v1/tag", {"model": j[0], "titles": [j[1]]}), jobs))
    for (model, _, k), (status, _, body) in zip(jobs, answers):
        assert status == 200 and [t["text"] for t in body["results"][0]["tags"]] == expected[model][k]
    batches = _metric(service.url, "peft_tags_batch_titles_count") - before
    assert batches < len(jobs)  # some requests shared a micro-batch
    text = call(service.url, "/metrics")[2]
    assert 'peft_tags_requests_total{model="spans",status="200"}' in text
    assert 'peft_tags_request_seconds_bucket{le="0.01",model="ia3"}' in text


def _metric(url: str, name: str) -> float:
    for line in call(url, "/metrics")[2].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.mark.parametrize("body,raw,status,says", [
    (None, b"{not json", 400, "not JSON"),
    (None, b"\xff\xfe", 400, "not JSON"),
    ([1, 2], None, 400, "JSON object"),
    (None, b"[" * 2000 + b"]" * 2000, 400, "nested too deeply"),
    (None, b'{"model": "spans", "titles": ["a\\ud800b"]}', 400, "surrogate"),
    (None, b'{"model": "spans\\udfff", "titles": ["x"]}', 400, "surrogate"),
    (None, b'{"model": "tags", "titles": ["x"], "options": {"top_k": 1' + b"0" * 5000 + b"}}", 400, "not JSON"),
    ({"model": "tags", "titles": ["x"], "options": {"top_k": 10 ** 400}}, None, 422, "options.top_k must be a number"),
    ({"model": "nope", "titles": ["x"]}, None, 404, "no model 'nope'"),
    ({"model": "spans", "titles": ["x"] * 9}, None, 413, "at most 8"),
    ({"model": "spans", "titles": ["x" * 41]}, None, 422, "at most 40"),
    ({"model": "spans", "titles": []}, None, 422, "non-empty list"),
    ({"model": "spans", "titles": [7]}, None, 422, "titles[0] is not a string"),
    ({"model": "spans", "titles": ["a\x00b"]}, None, 422, "control character"),
    ({"model": "spans", "titles": ["x"], "extra": 1}, None, 422, "unknown field 'extra'"),
    ({"model": 3, "titles": ["x"]}, None, 422, "'model' must be a string"),
    ({"model": "spans", "titles": ["x"], "options": {"top_k": 2}}, None, 422, "options.top_k"),
    ({"model": "tags", "titles": ["x"], "options": {"top_k": 0}}, None, 422, "top_k"),
    ({"model": "tags", "titles": ["x"], "options": {"threshold": "high"}}, None, 422, "options.threshold"),
    ({"model": "tags", "titles": ["x"], "options": {"top_k": 1.5}}, None, 422, "top_k"),
])
def test_bad_requests_get_a_json_error_never_a_500(service, body, raw, status, says):
    got, _, answer = call(service.url, "/v1/tag", body, raw)
    assert got == status and says in answer["error"]["message"], answer
    assert answer["error"]["status"] == status


def test_a_body_over_the_limit_is_413_before_it_is_parsed(service):
    status, _, answer = call(service.url, "/v1/tag", raw=b"[" + b" " * 200_000 + b"]")
    assert status == 413 and answer["error"]["limit"] == "max_body_bytes"


def test_a_full_queue_answers_503_with_retry_after(runs, monkeypatch):
    from fastapi.testclient import TestClient

    from peft_tags.serve.app import Limits, create_app
    from peft_tags.serve.models import load_runs, parse_run_args

    from peft_tags.serve import models

    gate, taken = threading.Event(), threading.Event()
    original = models.tag_requests

    def slow(group, requests, max_batch):
        taken.set()
        gate.wait(30)
        return original(group, requests, max_batch)

    monkeypatch.setattr(models, "tag_requests", slow)
    app = create_app(lambda: load_runs(parse_run_args([str(runs / "spans")])), Limits(max_queue=2, max_wait_ms=0),
                     load_in_background=False)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/v1/tag", json={"model": "spans", "titles": ["黑"]})
        assert taken.wait(30)  # the worker holds the first request
        second = pool.submit(client.post, "/v1/tag", json={"model": "spans", "titles": ["白", "红"]})
        for _ in range(200):
            if app.state.peft_tags["batcher"].queued_titles == 2:
                break
            time.sleep(0.02)
        third = client.post("/v1/tag", json={"model": "spans", "titles": ["绿"]})
        assert third.status_code == 503 and third.headers["retry-after"] == "1"
        assert third.json()["error"]["limit"] == "max_queue"
        gate.set()
        assert first.result(30).status_code == 200 and second.result(30).status_code == 200


def test_a_request_whose_tagging_fails_fails_alone_with_a_json_500(runs, monkeypatch):
    from fastapi.testclient import TestClient

    from peft_tags.serve import models
    from peft_tags.serve.app import Limits, create_app

    original = models.tag_requests

    def fragile(group, requests, max_batch):
        if any("坏" in t for _, titles, _ in requests for t in titles):
            raise RuntimeError("a bug")
        return original(group, requests, max_batch)

    monkeypatch.setattr(models, "tag_requests", fragile)
    app = create_app(lambda: models.load_runs(models.parse_run_args([str(runs / "spans")])),
                     Limits(max_wait_ms=300), load_in_background=False)
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        titles = ["黑色手机壳", "坏", "白色", "红色"]
        answers = list(pool.map(lambda t: client.post("/v1/tag", json={"model": "spans", "titles": [t]}), titles))
        assert [a.status_code for a in answers] == [200, 500, 200, 200]
        assert answers[1].json()["error"]["message"].startswith("tagging failed")
        assert 'status="500"' in client.get("/metrics").text
        assert client.get("/readyz").status_code == 200  # the worker lives on


def test_readyz_waits_for_the_models(runs):
    from fastapi.testclient import TestClient

    from peft_tags.serve.app import create_app

    release = threading.Event()

    def load():
        release.wait(30)
        from peft_tags.serve.models import load_runs, parse_run_args

        return load_runs(parse_run_args([str(runs / "spans")]))

    with TestClient(create_app(load)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert client.post("/v1/tag", json={"model": "spans", "titles": ["x"]}).status_code == 503
        release.set()
        for _ in range(300):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/readyz").json()["models"] == ["spans"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shutdown_answers_the_queued_requests_first(runs, monkeypatch):
    """What SIGTERM starts (uvicorn's should_exit): no new connections, the requests already
    queued are tagged and answered, then the batcher stops."""
    from peft_tags.serve import models
    from peft_tags.serve.app import Limits, create_app

    gate, original, held = threading.Event(), models.tag_requests, []

    def gated(group, requests, max_batch):
        held.append(sum(len(r[1]) for r in requests))
        gate.wait(30)
        return original(group, requests, max_batch)

    monkeypatch.setattr(models, "tag_requests", gated)
    app = create_app(lambda: models.load_runs(models.parse_run_args([str(runs / "spans")])),
                     Limits(max_batch=2, max_wait_ms=0))
    with Server(app) as s, ThreadPoolExecutor(len(TITLES)) as pool:
        futures = [pool.submit(call, s.url, "/v1/tag", {"model": "spans", "titles": [t]}) for t in TITLES]
        batcher = app.state.peft_tags["batcher"]
        for _ in range(500):  # every request in: one batch held at the gate, the rest queued
            if held and batcher.queued_titles == len(TITLES) - held[0]:
                break
            time.sleep(0.01)
        assert held and batcher.queued_titles == len(TITLES) - held[0] > 0
        s.server.should_exit = True
        for _ in range(100):  # closed to new connections within a few of uvicorn's 0.1 s ticks
            try:
                call(s.url, "/healthz", timeout=5)
            except OSError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the server still takes connections 10 s after should_exit")
        gate.set()
        assert [f.result(60)[0] for f in futures] == [200] * len(TITLES)
    assert not batcher.worker.is_alive()


def test_the_command_stops_cleanly_on_sigterm(runs):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "peft_tags", "serve", str(runs / "spans"), "--port", str(port)],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(url)
        assert call(url, "/v1/tag", {"model": "spans", "titles": TITLES})[0] == 200
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down, as a service manager expects
        assert proc.wait(60) in (0, -signal.SIGTERM)
        err = proc.stderr.read()
        assert "Traceback" not in err and "serving spans on http://127.0.0.1" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_errors_are_one_line(runs, tmp_path, capsys):
    cli_fails(["serve", str(tmp_path / "missing")], capsys, "missing", "not a peft-tags output directory")
    cli_fails(["serve", str(runs / "spans"), f"spans={runs / 'ia3'}"], capsys, "spans", "taken")
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(runs / "spans", damaged)
    (damaged / "head.safetensors").write_bytes((damaged / "head.safetensors").read_bytes()[:100])
    cli_fails(["serve", str(runs / "ia3"), str(damaged)], capsys, str(damaged / "head.safetensors"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cli_fails(["serve", str(runs / "spans"), "--port", str(s.getsockname()[1])], capsys, "--port")
    cli_fails(["serve", str(runs / "spans"), "--backend", "onnx"], capsys, "spans", "no ONNX model")


CHROMIUM = "/usr/bin/chromium"


def test_the_page_highlights_spans_in_a_real_browser(runs, service):
    """Debian's chromium, headless, driven by playwright: type a title, press Tag, read the marks.
    .ci/run installs chromium; there PEFT_TAGS_REQUIRE_BROWSER=1 turns a missing browser into a failure."""
    import os

    from peft_tags.predict import Tagger

    if not os.path.exists(CHROMIUM) or importlib_missing("playwright"):
        if os.environ.get("PEFT_TAGS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"no browser: {CHROMIUM} and the playwright package are needed")
        pytest.skip(f"needs {CHROMIUM} and playwright")
    from playwright.sync_api import sync_playwright

    title = TITLES[1]
    expected = [(t.text, t.label) for t in Tagger.load(runs / "spans").tag([title])[0]]
    assert expected
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(service.url + "/")
            page.wait_for_selector("#model option[value=spans]", state="attached", timeout=30_000)
            page.select_option("#model", "spans")
            page.fill("#titles", title)
            page.click("#tag")
            page.wait_for_selector("#results mark", timeout=30_000)
            marks = page.eval_on_selector_all(
                "#results mark", "ms => ms.map(m => [m.firstChild.textContent, m.dataset.label])")
            assert [tuple(m) for m in marks] == expected
            shown = page.eval_on_selector("#results .title", "d => [...d.childNodes].map(n => n.nodeType === 3 ? "
                                          "n.textContent : n.firstChild.textContent).join('')")
            assert shown == title  # the marks sit at their offsets, nothing lost or repeated
            assert "title(s) in" in page.inner_text("#status")
            # a multi-label run shows its tags as chips, and an error shows as an error
            tags = [t.tag for t in Tagger.load(runs / "tags").tag([title])[0]]
            page.select_option("#model", "tags")
            page.evaluate("document.querySelector('#status').textContent = ''")
            page.click("#tag")
            page.wait_for_function("document.querySelector('#status').textContent.includes('title(s) in')")
            assert page.eval_on_selector_all("#results .chip", "cs => cs.map(c => c.dataset.tag)") == tags
            page.fill("#titles", "x" * 41)
            page.click("#tag")
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "at most 40" in page.inner_text("#status")
        finally:
            browser.close()


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None
