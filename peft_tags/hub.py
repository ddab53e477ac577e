"""What a run tells tools outside peft-tags: which backbone it was trained on, its label names,
and (``output.push_to_hub``) the copy on a Hugging Face hub.

- ``backbone.json``: the backbone as the recipe named it, its original model id where it has
  one (an alias's ``hub_id``), the local weights the run was trained on and their sha256. The
  adapter's ``base_model_name_or_path`` is that id (or the absolute local directory), which
  transformers and peft can resolve; the alias (``me5-small``) is for peft-tags only.
- ``hf/``: a transformers config of the backbone with the run's head (``num_labels``,
  ``id2label``/``label2id`` from the task) and the tokenizer. The adapter sits
  beside it, so ``AutoModelForTokenClassification.from_pretrained(run, config=AutoConfig.
  from_pretrained(run + "/hf"))`` and ``pipeline(..., model=run, config=run + "/hf",
  tokenizer=run + "/hf")`` build the trained model with stock tools. (A ``config.json`` in the
  run folder itself would make transformers look there for the backbone's weights.)
"""
from __future__ import annotations

import logging
from pathlib import Path

from .errors import UserError

HF_DIR = "hf"
BACKBONE_FILE = "backbone.json"
WEIGHT_FILES = (".safetensors", ".bin", ".json", ".model", ".txt")


def original_id(name: str) -> str:
    """The id transformers can resolve for backbone ``name``: an alias's hub id, a hub id as
    given, or the absolute path of a local directory."""
    from .backbones import ALIASES

    if name in ALIASES and ALIASES[name].hub_id:
        return ALIASES[name].hub_id
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def backbone_record(name: str, local: str) -> dict:
    """``backbone.json``: the backbone by name and id, and the exact local files the run used."""
    from .backbones import ALIASES, sha256

    record = {"name": name, "id": original_id(name)}
    if name in ALIASES:
        record["source"] = ALIASES[name].description
    folder = Path(local)
    if folder.is_dir():
        record["weights"] = str(folder.resolve())
        record["sha256"] = {p.name: sha256(p) for p in sorted(folder.iterdir())
                            if p.is_file() and p.suffix in WEIGHT_FILES and not p.name.startswith(".")}
    return record


def same_id(base: str, backbone: str) -> bool:
    """Whether an adapter's ``base_model_name_or_path`` names the recipe's backbone: as given, or
    the alias's original id."""
    return base == original_id(backbone)


def label_config(task, meta: dict) -> dict:
    """``num_labels``, ``id2label`` and ``label2id`` of a run's head (a run's own head is per
    token, so no ``problem_type``: that is the sequence-classification export's)."""
    names = task.hf_labels(meta)
    out = {"num_labels": meta["num_outputs"]}
    if names is not None:
        if len(names) != meta["num_outputs"] or len(set(names)) != len(names):
            raise ValueError(f"task {task.name}: {len(names)} label names for {meta['num_outputs']} outputs")
        out["id2label"] = dict(enumerate(names))
        out["label2id"] = {n: i for i, n in enumerate(names)}
    return out


def write_hf_dir(dest: Path, model, tokenizer, task, meta: dict) -> None:
    """``dest``: the config of ``model`` (the trained transformers model, without peft's wrapper)
    with the run's label names (a token classifier's), and the tokenizer."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    for key, value in (label_config(task, meta) if task.model_kind == "token" else {}).items():
        setattr(config, key, value)
    config.architectures = [type(model).__name__]
    config.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))


def token_problem() -> str | None:
    """Why an upload could not authenticate (no token anywhere huggingface_hub looks), or None."""
    from huggingface_hub import get_token

    return None if get_token() else "no Hugging Face token: set HF_TOKEN or run `hf auth login`"


def push(run: Path, repo_id: str, private: bool = True, key: str = "--repo") -> str:
    """Upload the output directory ``run`` (its own files; not dot files) to the hub model
    repository ``repo_id``, created (``private``) when missing. Returns the commit's URL; one
    UserError line naming ``key`` and the repository when the hub refuses or cannot be reached."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:  # the HTTP client of huggingface_hub 1.x and 2.x: its connection errors are not OSErrors
        from httpx2 import HTTPError
    except ImportError:
        from httpx import HTTPError
    for name in ("httpx", "httpx2"):  # one INFO line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    problem = token_problem()
    if problem:
        raise UserError(f"{key}: cannot push to '{repo_id}': {problem}")
    files = sorted(p for p in run.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(run).parts))
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # one commit: the repository never holds half a run
        commit = api.create_commit(repo_id, repo_type="model", commit_message=f"peft-tags run {run.name}",
                                   operations=[CommitOperationAdd(p.relative_to(run).as_posix(), str(p)) for p in files])
    except (HfHubHTTPError, OSError, ValueError, HTTPError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{key}: cannot push to '{repo_id}': {text}") from None
    return str(getattr(commit, "commit_url", commit))
