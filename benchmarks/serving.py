"""Serving side by side, in one run: the stock way against peft-tags' backends and its service.

Offline, on the test split of a trained tagging run (jd-ner by default):

- **stock**: what a user of plain transformers + peft writes: ``PeftModel.from_pretrained`` over
  ``AutoModelForTokenClassification``, one title per call, argmax per token (decoded to
  character spans by the run's slot map, so its F1 is comparable);
- **torch**: ``Tagger.load(run)``; **onnx-fp32** and **onnx-int8**: ``peft-tags export RUN DEST
  --format onnx [--quantize int8]`` then ``Tagger.load(DEST, backend="onnx")``;

each at batch 1 (one title per call) and batched (all titles, batches sorted by length):
titles/s and test micro-F1.

The service: ``peft-tags serve`` in its own process per backend, loaded by 1, 8 and 32
concurrent loopback clients (threads, keep-alive connections, one title per request) for
``--seconds`` each: requests/s, p50 and p99 latency, errors. Memory: the resident size of a
service with one adapter against the same service with a second adapter beside it.

    python -m benchmarks.serving runs/jd-ner/lora                 # about 15 minutes on 2 cores
    python -m benchmarks.serving RUN --seconds 5 --clients 1 8    # a quick look

Writes ``benchmarks/results/serving[-dirty].json`` and ``.md`` with provenance.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .provenance import REPO, provenance


def test_examples(run: Path, data_root: str | None):
    from peft_tags.config import load_recipe
    from peft_tags.data import read_examples, resolve_data_path

    recipe = load_recipe(run / "recipe.yaml")
    d = recipe.data
    path = resolve_data_path(d.test, data_root or d.root, key="data.test")
    return read_examples(str(path), d.format, fullwidth_to_halfwidth=d.fullwidth_to_halfwidth, lowercase=d.lowercase)


def f1(pred_spans, examples) -> float:
    from peft_tags.metrics import span_f1

    return span_f1(pred_spans, [e.spans for e in examples])["micro_f1"]


def spans_of(tags) -> list:
    from peft_tags.data import Span

    return [Span(t.start, t.end, t.label) for t in tags]


def stock(run: Path, examples) -> dict:
    """PeftModel over AutoModelForTokenClassification, one title per call, argmax per token."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    from peft_tags.predict import Tagger

    from peft_tags.backbones import resolve_backbone

    ours = Tagger.load(run)  # only for its slot map (codec), to turn token labels into spans
    codec, b = ours.codec, ours.recipe.backbone
    del ours
    base = AutoModelForTokenClassification.from_pretrained(resolve_backbone(b.name, b.cache_dir),
                                                           num_labels=codec.num_outputs)
    model = PeftModel.from_pretrained(base, str(run)).eval()
    preds = []
    start = time.perf_counter()
    with torch.no_grad():
        for e in examples:
            enc = codec.encode([e.text])[0]
            logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0]
            ids = logits.reshape(len(enc.input_ids), codec.slots, len(codec.labels)).argmax(-1).numpy()
            preds.append(codec.decode(e.text, enc, label_ids=ids))
    seconds = time.perf_counter() - start
    return {"backend": "stock PeftModel, argmax", "batch": 1, "titles_per_s": len(examples) / seconds,
            "test_micro_f1": f1(preds, examples)}


def ours(tagger, name: str, examples, batch: int) -> dict:
    titles = [e.text for e in examples]
    tagger.tag(titles[:8], batch_size=batch)  # warm-up
    start = time.perf_counter()
    if batch == 1:
        tags = [tagger.tag([t], batch_size=1)[0] for t in titles]
    else:
        tags = tagger.tag(titles, batch_size=batch)
    seconds = time.perf_counter() - start
    return {"backend": name, "batch": batch, "titles_per_s": len(titles) / seconds,
            "test_micro_f1": f1([spans_of(t) for t in tags], examples)}


# ----------------------------------------------------------------------------- the service
class Service:
    def __init__(self, runs: list[str], backend: str, port: int, threads: int):
        self.url = ("127.0.0.1", port)
        cmd = [sys.executable, "-m", "peft_tags", "serve", *runs, "--port", str(port), "--backend", backend,
               "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))

    def __enter__(self):
        end = time.time() + 600
        while time.time() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if request(self.url, "GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("the service did not get ready in 10 minutes")

    def rss_mb(self) -> dict:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        get = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in status.splitlines())
               if k in ("VmRSS", "VmHWM")}
        return {"rss_mb": round(get["VmRSS"], 1), "peak_rss_mb": round(get["VmHWM"], 1)}

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def request(addr, method: str, path: str, body: dict | None = None, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection(*addr, timeout=60)
    try:
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        conn.request(method, path, body=data, headers={"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        if own:
            conn.close()


def load(addr, model: str, titles: list[str], clients: int, seconds: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def client(k: int):
        conn = http.client.HTTPConnection(*addr, timeout=60)
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                status, _ = request(addr, "POST", "/v1/tag", {"model": model, "titles": [titles[i % len(titles)]]}, conn)
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(*addr, timeout=60)
            if status == 200:
                latencies[k].append(time.perf_counter() - t0)
            else:
                errors[k] += 1
            i += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = sorted(x for xs in latencies for x in xs)
    pick = (lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None)
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(lat), "requests_per_s": round(len(lat) / elapsed, 1),
            "p50_ms": pick(0.50), "p99_ms": pick(0.99), "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
            "errors": sum(errors)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained tagging run (the LoRA run of jd-ner)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--work", default=None, help="keep the ONNX exports here (default: a temporary folder)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--service-backends", nargs="+", default=["onnx-int8", "torch"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serving"))
    args = p.parse_args(argv)

    import torch

    from peft_tags.export import export
    from peft_tags.predict import Tagger

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    examples = test_examples(run, args.data_root)
    work_ctx = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(args.work or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    dirs = {"onnx-fp32": work / "onnx-fp32", "onnx-int8": work / "onnx-int8"}
    for name, dest in dirs.items():
        if not (dest / "onnx" / "model.onnx").is_file():
            t0 = time.perf_counter()
            export(run, dest, format="onnx", quantize="int8" if name.endswith("int8") else "none")
            print(f"exported {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    sizes = {"adapter_mb": round(sum(f.stat().st_size for f in run.glob("adapter_model.safetensors")) / 2**20, 2),
             **{f"{k}_mb": round((v / "onnx" / "model.onnx").stat().st_size / 2**20, 1) for k, v in dirs.items()}}

    rows = [stock(run, examples)]
    print(rows[-1], file=sys.stderr)
    taggers = {"torch": Tagger.load(run),
               "onnx-fp32": Tagger.load(dirs["onnx-fp32"], backend="onnx", threads=args.threads),
               "onnx-int8": Tagger.load(dirs["onnx-int8"], backend="onnx", threads=args.threads)}
    for name, tagger in taggers.items():
        # as predict and serve do for the onnx backend: onnxruntime all threads, torch one
        torch.set_num_threads(1 if name.startswith("onnx") else args.threads)
        for batch in (1, args.batch):
            rows.append(ours(tagger, name, examples, batch))
            print(rows[-1], file=sys.stderr)
    torch.set_num_threads(args.threads)
    del taggers

    titles = [e.text for e in examples]
    service = []
    for backend in args.service_backends:
        target = str(run) if backend == "torch" else str(dirs[backend])
        with Service([f"jd={target}"], "torch" if backend == "torch" else "onnx", free_port(), args.threads) as s:
            addr = s.url
            for _ in range(20):
                request(addr, "POST", "/v1/tag", {"model": "jd", "titles": titles[:1]})
            for clients in args.clients:
                row = {"backend": backend, **load(addr, "jd", titles, clients, args.seconds)}
                service.append(row)
                print(row, file=sys.stderr)

    memory = {}
    for label, runs in (("one adapter", [f"a={run}"]), ("two adapters", [f"a={run}", f"b={run}"])):
        with Service(runs, "torch", free_port(), args.threads) as s:
            for name in ("a", "b")[: len(runs)]:
                request(s.url, "POST", "/v1/tag", {"model": name, "titles": titles[:32]})
            memory[label] = s.rss_mb()
            shared = json.loads(request(s.url, "GET", "/v1/models")[1])["models"][0]["served_with"]
            memory[label]["served_with_a"] = shared
    memory["ratio"] = round(memory["two adapters"]["rss_mb"] / memory["one adapter"]["rss_mb"], 3)

    stock_tps = rows[0]["titles_per_s"]
    torch_f1 = next(r["test_micro_f1"] for r in rows if r["backend"] == "torch" and r["batch"] > 1)
    for r in rows:
        r["x_stock"] = round(r["titles_per_s"] / stock_tps, 2)
        r["f1_minus_torch_points"] = round(100 * (r["test_micro_f1"] - torch_f1), 2)
        r["titles_per_s"] = round(r["titles_per_s"], 1)
    result = {"provenance": provenance(), "run": str(run.resolve()), "test_titles": len(examples),
              "threads": args.threads, "sizes": sizes, "offline": rows, "service": service, "memory": memory,
              "command": "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out + ("-dirty" if result["provenance"]["git_dirty"] else ""))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    out.with_suffix(".md").write_text(report(result), encoding="utf-8")
    print(report(result))
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


def report(r: dict) -> str:
    pv = r["provenance"]
    lines = ["# Serving: stock loop against peft-tags backends and service", "",
             f"`{r['command']}` at {pv['git_commit'][:10]}{' (dirty)' if pv['git_dirty'] else ''}, {pv['date']}; "
             f"{pv['cpu']}, {pv['cores']} cores, {r['threads']} threads; torch {pv['torch']}; "
             f"{r['test_titles']} test titles.", "",
             "| backend | batch | titles/s | x stock | test micro-F1 | F1 - torch (points) |", "|---|---|---|---|---|---|"]
    for x in r["offline"]:
        lines.append(f"| {x['backend']} | {x['batch']} | {x['titles_per_s']} | {x['x_stock']} | {x['test_micro_f1']:.4f} "
                     f"| {x['f1_minus_torch_points']:+.2f} |")
    lines += ["", "Service (one title per request, keep-alive loopback clients):", "",
              "| backend | clients | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for x in r["service"]:
        lines.append(f"| {x['backend']} | {x['clients']} | {x['requests_per_s']} | {x['p50_ms']} | {x['p99_ms']} | "
                     f"{x['errors']} |")
    m = r["memory"]
    lines += ["", f"Memory (resident, torch backend, after tagging with each model): one adapter "
              f"{m['one adapter']['rss_mb']} MB, two adapters on one backbone {m['two adapters']['rss_mb']} MB "
              f"(x{m['ratio']}). Sizes: {json.dumps(r['sizes'])}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
