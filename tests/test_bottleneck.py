"""Bottleneck adapters through the ordinary peft API (no peft_tags runner involved)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO

from peft_tags.tuners.bottleneck import BottleneckConfig, BottleneckLayer  # importing it registers the peft type

D, LAYERS, LABELS = 32, 2, 5


def _base(tiny_backbone):
    from transformers import BertForTokenClassification

    torch.manual_seed(0)
    return BertForTokenClassification.from_pretrained(str(tiny_backbone), num_labels=LABELS).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 40, (3, 9), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _wrapped(tiny_backbone, **config):
    from peft import get_peft_model

    base = _base(tiny_backbone)
    reference = _base(tiny_backbone)
    config = BottleneckConfig(modules_to_save=["classifier"], **config)
    return get_peft_model(base, config).eval(), reference


@pytest.mark.parametrize("variant, expected", [
    ("houlsby", {f"bert.encoder.layer.{i}.{s}" for i in range(LAYERS) for s in ("attention.output.dense", "output.dense")}),
    ("pfeiffer", {f"bert.encoder.layer.{i}.output.dense" for i in range(LAYERS)}),
])
def test_variants_adapt_the_right_sublayers(variant, expected, tiny_backbone):
    model, _ = _wrapped(tiny_backbone, variant=variant, bottleneck_size=4)
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, BottleneckLayer)}
    assert wrapped == expected


def test_identity_at_init_and_disable_adapter_gives_the_base_model(tiny_backbone):
    x = _inputs()
    model, reference = _wrapped(tiny_backbone, bottleneck_size=4)
    with torch.no_grad():
        base = reference(**x).logits
        torch.testing.assert_close(model(**x).logits, base, rtol=0, atol=0)  # up-projection starts at zero
    model, _ = _wrapped(tiny_backbone, bottleneck_size=4, init_weights=False)
    with torch.no_grad():
        assert not torch.allclose(model(**x).logits, base, atol=1e-4)
        with model.disable_adapter():
            torch.testing.assert_close(model(**x).logits, base, rtol=0, atol=0)


def test_print_trainable_parameters_counts_adapters_and_head(tiny_backbone, capsys):
    model, _ = _wrapped(tiny_backbone, variant="houlsby", reduction_factor=8)  # m = 4
    model.print_trainable_parameters()
    printed = capsys.readouterr().out
    adapters = LAYERS * 2 * (2 * D * 4 + 4 + D)
    head = D * LABELS + LABELS
    assert f"trainable params: {adapters + head:,}" in printed


def test_save_load_in_a_fresh_process_and_several_named_adapters(tiny_backbone, tmp_path):
    import json

    x = _inputs()
    model, _ = _wrapped(tiny_backbone, bottleneck_size=4, init_weights=False)
    model.add_adapter("ffn_only", BottleneckConfig(variant="pfeiffer", bottleneck_size=8, init_weights=False,
                                                   modules_to_save=["classifier"]))
    with torch.no_grad():
        first = model(**x).logits
        model.set_adapter("ffn_only")
        second = model(**x).logits
        model.set_adapter("default")
    assert not torch.allclose(first, second, atol=1e-4)
    model.save_pretrained(str(tmp_path / "adapters"))
    config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    assert config["peft_type"] == "BOTTLENECK" and config["variant"] == "houlsby"
    assert (tmp_path / "adapters" / "ffn_only" / "adapter_config.json").is_file()
    torch.save({"x": x, "first": first, "second": second}, tmp_path / "expected.pt")

    script = f"""
import torch
import peft_tags.tuners.bottleneck
from peft import PeftModel
from transformers import BertForTokenClassification
base = BertForTokenClassification.from_pretrained({str(tiny_backbone)!r}, num_labels={LABELS})
model = PeftModel.from_pretrained(base, {str(tmp_path / 'adapters')!r}).eval()
model.load_adapter({str(tmp_path / 'adapters' / 'ffn_only')!r}, adapter_name="ffn_only")
e = torch.load({str(tmp_path / 'expected.pt')!r})
with torch.no_grad():
    torch.testing.assert_close(model(**e["x"]).logits, e["first"], rtol=0, atol=0)
    model.set_adapter("ffn_only")
    torch.testing.assert_close(model(**e["x"]).logits, e["second"], rtol=0, atol=0)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_merging_is_refused_and_unload_restores_the_base(tiny_backbone):
    x = _inputs()
    model, reference = _wrapped(tiny_backbone, bottleneck_size=4, init_weights=False)
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    plain = model.unload()
    assert not any(isinstance(m, BottleneckLayer) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain.bert(**x).last_hidden_state, reference.bert(**x).last_hidden_state,
                                   rtol=0, atol=0)


def test_unknown_backbone_needs_explicit_targets(tiny_backbone):
    from peft import get_peft_model

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.proj(x)

    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(Tiny(), BottleneckConfig(bottleneck_size=2))
    model = get_peft_model(Tiny(), BottleneckConfig(bottleneck_size=2, target_modules=["proj"]))
    assert isinstance(model.base_model.model.proj, BottleneckLayer)


def test_bad_config_values_are_refused():
    for bad in ({"variant": "parallel"}, {"activation": "softmax"}, {"bottleneck_size": 0}, {"dropout": 1.0}):
        with pytest.raises(ValueError):
            BottleneckConfig(**bad)
