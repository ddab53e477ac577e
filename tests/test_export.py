"""``peft-tags export``: the adapter merged into a standalone transformers model."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import write_recipe
from peft_tags.cli import main as cli_main

TEXTS = ["华为黑色手机壳", "小米白色保护套硅胶", "得力 金属支架2024新款"]


def _train(tmp_path, backbone, data, name, **kw):
    recipe = write_recipe(tmp_path / f"{name}.yaml", backbone, data, tmp_path / name, epochs=1, lr=1e-2, **kw)
    assert cli_main(["train", str(recipe)]) == 0
    return tmp_path / name


def _log_probs(model, codec):
    from peft_tags.tasks.tagging import predict_log_probs

    return predict_log_probs(model, codec, codec.encode(TEXTS), 4, torch.device("cpu"))


def test_export_merges_lora_into_a_standalone_model(tmp_path, tiny_backbone, toy_data):
    from transformers import AutoModelForTokenClassification

    from peft_tags.predict import Tagger

    run = _train(tmp_path, tiny_backbone, toy_data, "lora")
    assert cli_main(["export", str(run), str(tmp_path / "merged")]) == 0
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "merged" / "model")  # no peft involved
    assert not any("lora" in n for n, _ in plain.named_parameters())
    adapter, merged = Tagger.load(run, device="cpu"), Tagger.load(tmp_path / "merged", device="cpu")
    assert merged.recipe.method.name == "full"
    for a, b in zip(_log_probs(adapter.model, adapter.codec), _log_probs(plain.eval(), adapter.codec)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert adapter.tag(TEXTS) == merged.tag(TEXTS)
    assert cli_main(["export", str(run), str(run), "--overwrite"]) == 2  # never over the run itself
    assert (run / "adapter_model.safetensors").is_file()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_export_of_qlora_dequantises_instead_of_merging_into_4_bits(tmp_path, tiny_backbone_64, toy_data):
    """The exported model must compute what the trained 4-bit model computed; merging into
    the original float32 weights (ignoring the quantisation the adapter was trained on) is
    measurably further off."""
    from peft import PeftModel

    from peft_tags.model import build_token_classifier
    from peft_tags.predict import Tagger, _load_head

    run = _train(tmp_path, tiny_backbone_64, toy_data, "qlora", backbone_options={"quantization": "nf4"})
    assert cli_main(["export", str(run), str(tmp_path / "merged")]) == 0
    trained = Tagger.load(run, device="cpu")
    merged = Tagger.load(tmp_path / "merged", device="cpu")
    naive = build_token_classifier(str(tiny_backbone_64), trained.codec.num_outputs, seed=0)
    naive = PeftModel.from_pretrained(naive, str(run))
    _load_head(naive, run / "head.safetensors", "classifier")
    naive = naive.merge_and_unload().eval()

    want = np.concatenate([x.ravel() for x in _log_probs(trained.model, trained.codec)])
    got = np.concatenate([x.ravel() for x in _log_probs(merged.model, trained.codec)])
    off = np.concatenate([x.ravel() for x in _log_probs(naive, trained.codec)])
    err_dequantised, err_naive = np.abs(got - want).max(), np.abs(off - want).max()
    assert err_dequantised < 2e-3, err_dequantised
    assert err_naive > 5 * err_dequantised, (err_naive, err_dequantised)


def test_methods_that_cannot_merge_are_refused(tmp_path, tiny_backbone, toy_data, capsys):
    run = _train(tmp_path, tiny_backbone, toy_data, "bn", method="bottleneck", method_options={"bottleneck_size": 4})
    assert cli_main(["export", str(run), str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert "method 'bottleneck'" in err and "cannot be merged" in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()
    assert not list(tmp_path.glob(".merged.tmp-*"))


def test_export_errors_name_the_path(tmp_path, capsys):
    assert cli_main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "not a peft-tags output directory" in capsys.readouterr().err
