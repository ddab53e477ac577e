"""ONNX export and the onnx backend: the same decoding, the same answers as the torch backend."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_recipe
from helpers import cli_fails
from peft_tags.cli import main as cli_main

pytest.importorskip("onnxruntime")

TEXTS = ["华为黑色手机壳", "小米白色保护套硅胶", "得力 金属支架2024新款", "黑"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_backbone, toy_data):
    tmp = tmp_path_factory.mktemp("onnx")
    recipe = write_recipe(tmp / "lora.yaml", tiny_backbone, toy_data, tmp / "lora", epochs=2, lr=1e-2)
    assert cli_main(["train", str(recipe)]) == 0
    assert cli_main(["export", str(tmp / "lora"), str(tmp / "fp32"), "--format", "onnx"]) == 0
    assert cli_main(["export", str(tmp / "lora"), str(tmp / "int8"), "--format", "onnx", "--quantize", "int8"]) == 0
    return tmp


def _log_probs(tagger):
    from peft_tags.tasks.tagging import predict_log_probs

    return predict_log_probs(tagger.model, tagger.codec, tagger.codec.encode(TEXTS), 2, tagger.device)


def test_onnx_backend_computes_what_the_trained_run_computes(exported):
    from peft_tags.predict import Tagger

    run, onnx = Tagger.load(exported / "lora", device="cpu"), Tagger.load(exported / "fp32", backend="onnx")
    assert onnx.backend == "onnx" and type(onnx.model).__name__ == "OnnxModel"
    for a, b in zip(_log_probs(run), _log_probs(onnx)):  # batches of 2 with padding: masks are honoured
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    tags_run, tags_onnx = run.tag(TEXTS), onnx.tag(TEXTS)
    assert tags_run == tags_onnx and any(tags_run)
    for a, b in zip(tags_run, tags_onnx):
        assert [t.score for t in a] == pytest.approx([t.score for t in b], abs=1e-3)
    meta = json.loads((exported / "fp32" / "export.json").read_text())
    assert meta["onnx"]["quantize"] == "none"
    assert meta["onnx"]["fused"]["Attention"] == 2  # one fused attention per layer of the tiny BERT


def test_int8_export_is_smaller_and_close(exported):
    from peft_tags.predict import Tagger

    fp32, int8 = exported / "fp32" / "onnx" / "model.onnx", exported / "int8" / "onnx" / "model.onnx"
    assert int8.stat().st_size < fp32.stat().st_size
    assert not list((exported / "int8" / "onnx").glob("*.fp32.onnx"))  # the float model was only a step
    assert json.loads((exported / "int8" / "export.json").read_text())["onnx"]["quantize"] == "int8"
    a, b = Tagger.load(exported / "fp32", backend="onnx"), Tagger.load(exported / "int8", backend="onnx")
    pa, pb = _log_probs(a), _log_probs(b)
    assert max(float(np.abs(np.exp(x) - np.exp(y)).max()) for x, y in zip(pa, pb)) < 0.03
    assert any(float(np.abs(x - y).max()) > 0 for x, y in zip(pa, pb))  # it did quantise


def test_predict_cli_backend_onnx(exported, capsys):
    assert cli_main(["predict", str(exported / "fp32"), TEXTS[0], "--backend", "onnx"]) == 0
    onnx_out = capsys.readouterr().out
    assert cli_main(["predict", str(exported / "lora"), TEXTS[0]]) == 0
    assert capsys.readouterr().out == onnx_out


def test_onnx_errors_are_one_line(exported, tmp_path, capsys):
    cli_fails(["predict", str(exported / "lora"), "x", "--backend", "onnx"], capsys, "no ONNX model", "--format onnx")
    cli_fails(["export", str(exported / "lora"), str(tmp_path / "d"), "--quantize", "int8"], capsys, "--quantize")
    assert not (tmp_path / "d").exists()
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(exported / "fp32", bad)
    (bad / "onnx" / "model.onnx").write_bytes(b"not a model")
    cli_fails(["predict", str(bad), "x", "--backend", "onnx"], capsys, "model.onnx", "not a loadable ONNX model")
