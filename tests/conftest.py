"""Shared fixtures: a tiny random backbone and a learnable toy tagging set, built offline."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from helpers import REPO, drop_log_handlers  # noqa: F401  (REPO: test modules import it from here too)

# no test reaches for a model hub: hub ids resolve from the local cache or fail at once
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# toy product vocabulary: type -> values; titles are random concatenations
TOY_TYPES = {
    "1": ["华为", "小米", "得力", "晨光"],  # brand
    "16": ["黑色", "白色", "红色"],  # colour
    "4": ["手机壳", "保护套", "支架", "笔记本"],  # product word
    "12": ["硅胶", "金属"],  # material
}
FILLERS = ["新款", "包邮", " ", "2024"]


def toy_titles(n: int, seed: int) -> list[list[tuple[str, str | None]]]:
    rng = random.Random(seed)
    titles = []
    for _ in range(n):
        parts = [(rng.choice(TOY_TYPES["1"]), "1")]
        for t in rng.sample(["16", "12", "4"], k=rng.randint(1, 3)):
            if rng.random() < 0.3:
                parts.append((rng.choice(FILLERS), None))
            parts.append((rng.choice(TOY_TYPES[t]), t))
        titles.append(parts)
    return titles


def write_conll(path: Path, titles) -> None:
    lines = []
    for parts in titles:
        for text, t in parts:
            for i, ch in enumerate(text):
                lines.append(f"{ch} {'O' if t is None else ('B-' if i == 0 else 'I-') + t}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(autouse=True)
def _no_stale_log_handlers():
    """A training run points the root logger at the stderr pytest captured for that test; later
    tests would log into a closed stream. Each test starts without those handlers."""
    yield
    drop_log_handlers()


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "toy").mkdir()
    for split, n, seed in (("train", 160, 1), ("dev", 40, 2), ("test", 40, 3)):
        write_conll(root / "toy" / f"{split}.txt", toy_titles(n, seed))
    return root


@pytest.fixture(scope="session")
def toy_tags(toy_data) -> Path:
    """The toy titles as a multi-label set (``toy-tags/*.jsonl`` under the same data root): the
    colour, material and product-word values of each title are its tags."""
    from peft_tags.derive import derive_tags

    derive_tags(str(toy_data / "toy"), toy_data / "toy-tags", types=["16", "12", "4"], min_count=1)
    return toy_data


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT with a SentencePiece-style unigram tokenizer that has
    multi-character pieces (so tokens straddle span boundaries, as with me5-small)."""
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"), hidden=32)


@pytest.fixture(scope="session")
def tiny_backbone_64(tmp_path_factory) -> Path:
    """The same with hidden size 64: bitsandbytes' CPU 4-bit kernels need rows of >= 64 values."""
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny-bert-64"), hidden=64)


def make_tiny_backbone(out: Path, hidden: int) -> Path:
    from transformers import BertConfig, BertForTokenClassification

    from peft_tags.backbones import _e5_tokenizer

    chars = sorted({ch for vals in TOY_TYPES.values() for v in vals for ch in v} | {ch for f in FILLERS for ch in f}
                   | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in chars if c != " "]
    # multi-character pieces, some crossing toy span boundaries ("色手", "为黑")
    pieces += [(p, -3.0) for p in ["手机", "机壳", "色手", "为黑", "新款", "包邮", "▁新", "20", "24"]]
    pieces.append(("<mask>", 0.0))
    tok = _e5_tokenizer(pieces, {"bos": 0, "eos": 2, "pad": 1, "unk": 3})
    cfg = BertConfig(vocab_size=len(pieces), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=1)
    import torch

    torch.manual_seed(0)
    model = BertForTokenClassification(cfg)
    model.bert.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 Llama with a byte-level tokenizer (every text round-trips) and a
    ChatML-style chat template: a stand-in for SmolLM2 in the generation task's tests."""
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"))


def make_tiny_causal_lm(out: Path, chat: bool = True) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    if chat:
        fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
                      initializer_range=0.2)  # larger than the default, so small adapters move its outputs
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def write_recipe(path: Path, backbone: Path, data_root: Path, out: Path, method: str = "lora", method_options=None,
                 backbone_options=None, task_options=None, **training) -> Path:
    """A recipe for the toy data; ``method_options`` (a dict) replaces the default options of ``method``.
    ``task_options`` with ``type: multilabel`` trains on the ``toy_tags`` files instead."""
    import json

    train = {"epochs": 3, "batch_size": 8, "lr": 5e-3, "head_lr": 1e-2, "log_with": "none", "seed": 7, **training}
    if method_options is not None:
        method_block = f"  name: {method}\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in method_options.items())
    elif method == "lora":
        method_block = "  name: lora\n  r: 4\n  alpha: 8\n  target_modules: [query, value]\n"
    else:
        method_block = f"  name: {method}\n"
    extra_backbone = "".join(f"  {k}: {v}\n" for k, v in (backbone_options or {}).items())
    task = {"type": "tagging", "slots": 4} if not task_options else dict(task_options)
    if task.get("type") == "multilabel":
        files = "  format: tags\n  train: toy-tags/train.jsonl\n  dev: toy-tags/dev.jsonl\n  test: toy-tags/test.jsonl\n"
    else:
        files = "  format: conll\n  train: toy/train.txt\n  dev: toy/dev.txt\n  test: toy/test.txt\n"
    path.write_text(
        "backbone:\n"
        f"  name: {backbone}\n  max_length: 64\n{extra_backbone}"
        "task:\n" + "".join(f"  {k}: {v if isinstance(v, str) else json.dumps(v)}\n" for k, v in task.items())
        + f"data:\n  root: {data_root}\n{files}"
        f"method:\n{method_block}"
        "training:\n" + "".join(f"  {k}: {v}\n" for k, v in train.items())
        + f"output:\n  dir: {out}\n",
        encoding="utf-8",
    )
    return path


def train_toy(tmp: Path, backbone: Path, data_root: Path, **recipe) -> Path:
    """Train :func:`write_recipe`'s recipe (``recipe``: its keyword arguments) in-process into
    ``tmp / "out"`` and return that run directory."""
    from peft_tags.cli import main as cli_main

    path = write_recipe(tmp / "r.yaml", backbone, data_root, tmp / "out", **recipe)
    assert cli_main(["train", str(path)]) == 0
    return tmp / "out"
