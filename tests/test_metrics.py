import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from peft_tags.data import Span
from peft_tags.metrics import SPAN_F1_DIR, compute_span_f1, decode_span, encode_span, span_f1

REPO = Path(__file__).resolve().parents[1]

# example 1: gold A[0,2) B[3,5) A[6,8); predicted A[0,2) (hit) B[3,4) (wrong end) C[9,10) (spurious)
# example 2: gold B[0,1) B[5,6);        predicted B[0,1) (hit) A[2,3) (spurious)
GOLD = [[Span(0, 2, "A"), Span(3, 5, "B"), Span(6, 8, "A")], [Span(0, 1, "B"), Span(5, 6, "B")]]
PRED = [[Span(0, 2, "A"), Span(3, 4, "B"), Span(9, 10, "C")], [Span(0, 1, "B"), Span(2, 3, "A")]]


def test_hand_computed_micro_macro():
    r = span_f1(PRED, GOLD)
    # micro: tp 2, predicted 5, gold 5
    assert r["micro_precision"] == pytest.approx(0.4)
    assert r["micro_recall"] == pytest.approx(0.4)
    assert r["micro_f1"] == pytest.approx(0.4)
    # A: P 1/2 R 1/2 F 1/2; B: P 1/2 R 1/3 F 0.4; C: only predicted, not in the macro average
    assert r["per_type"]["A"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert r["per_type"]["B"] == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4, "support": 3})
    assert r["per_type"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_precision"] == pytest.approx(0.5)
    assert r["macro_recall"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert r["macro_f1"] == pytest.approx(0.45)


def test_report_rows():
    lines = span_f1(PRED, GOLD)["report"].splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[1] == ""
    # types by support, descending
    assert [ln.split()[0] for ln in lines[2:5]] == ["B", "A", "C"]
    assert lines[2].split() == ["B", "0.5000", "0.3333", "0.4000", "3"]
    assert lines[5] == ""
    assert lines[6].split() == ["micro", "avg", "0.4000", "0.4000", "0.4000", "5"]
    assert lines[7].split() == ["macro", "avg", "0.5000", "0.4167", "0.4500", "5"]
    assert lines[8].split() == ["weighted", "avg", "0.5000", "0.4000", "0.4400", "5"]
    assert len(lines) == 9
    # right-aligned names, columns line up like sklearn's
    assert lines[8].startswith("weighted avg ")
    assert len({len(ln) for ln in lines[2:5] + lines[6:]}) == 1
    assert span_f1(PRED, GOLD, digits=2)["report"].splitlines()[2].split()[1] == "0.50"


def test_zero_division():
    r = span_f1([[], []], GOLD)  # nothing predicted
    assert (r["micro_precision"], r["micro_recall"], r["micro_f1"]) == (0.0, 0.0, 0.0)
    assert r["per_type"]["A"]["support"] == 2 and r["per_type"]["A"]["precision"] == 0.0
    r = span_f1(PRED, [[], []])  # nothing to find
    assert (r["micro_precision"], r["macro_f1"]) == (0.0, 0.0)
    assert all(v["support"] == 0 for v in r["per_type"].values())
    r = span_f1([[]], [[]])
    assert r["micro_f1"] == 0.0 and r["macro_f1"] == 0.0 and r["per_type"] == {}
    assert "micro avg" in r["report"]


def test_perfect_duplicates_and_support():
    gold = [[Span(0, 1, "x"), Span(2, 3, "x"), Span(4, 6, "y")]]
    r = span_f1(gold, gold)
    assert r["micro_f1"] == 1.0 and r["macro_f1"] == 1.0
    assert {t: v["support"] for t, v in r["per_type"].items()} == {"x": 2, "y": 1}
    # a span predicted twice counts once
    r = compute_span_f1([["x\t0\t1", "x\t0\t1"]], [["x\t0\t1"]])
    assert r["micro_precision"] == 1.0


def test_encoding_and_length_mismatch():
    assert decode_span(encode_span("a\tb", 3, 7)) == ("a\tb", 3, 7)
    with pytest.raises(ValueError):
        decode_span("x 1 2")
    with pytest.raises(ValueError):
        span_f1([[]], [[], []])
    # tuples and strings are the same
    assert compute_span_f1([[("x", 0, 1)]], [["x\t0\t1"]])["micro_f1"] == 1.0


def random_case(n, seed=0):
    rng = random.Random(seed)
    gold, pred = [], []
    for _ in range(n):
        g = [Span(i * 4, i * 4 + rng.randint(1, 3), rng.choice("ABCDE")) for i in range(rng.randint(0, 8))]
        p = [s if rng.random() < 0.7 else Span(s.start, s.end, rng.choice("ABCDEF")) for s in g if rng.random() < 0.9]
        gold.append(g)
        pred.append(p)
    return pred, gold


_OFFLINE_SCRIPT = r"""
import json, socket, sys, time
def no_network(*a, **k):
    raise OSError("network disabled in this test")
socket.socket.connect = no_network
socket.create_connection = no_network
socket.getaddrinfo = no_network
t = time.time()
from peft_tags.metrics import load_span_f1
m = load_span_f1()
assert load_span_f1() is m
load_s = time.time() - t
data = json.load(sys.stdin)
t = time.time()
r = m.compute(predictions=data["pred"], references=data["gold"])
json.dump({"result": r, "load_s": load_s, "compute_s": time.time() - t}, sys.stdout)
"""


def test_evaluate_module_loads_offline_and_agrees(tmp_path):
    assert (SPAN_F1_DIR / "span_f1.py").is_file()
    pred, gold = random_case(500)
    enc = lambda ex: [[encode_span(s.label, s.start, s.end) for s in spans] for spans in ex]  # noqa: E731
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["HF_HOME"] = str(tmp_path / "hf")  # a fresh modules cache: evaluate copies the script there
    env.pop("HF_MODULES_CACHE", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT],
        input=json.dumps({"pred": enc(pred), "gold": enc(gold)}),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    expected = span_f1(pred, gold)
    got = out["result"]
    assert got["report"] == expected["report"]
    for k in ("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1"):
        assert got[k] == pytest.approx(expected[k])
    assert got["per_type"].keys() == expected["per_type"].keys()
    for t, v in expected["per_type"].items():
        assert got["per_type"][t] == pytest.approx(v)
    assert 0 < expected["micro_f1"] < 1
    assert out["compute_s"] < 5.0
