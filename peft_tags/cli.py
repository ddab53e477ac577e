"""The ``peft-tags`` command: train, validate, ls, predict, export, push, serve, retune, derive-tags.

Mistakes a user can make end in one line per problem on stderr and exit code 2 (usage
mistakes as ``peft-tags CMD: error: ...``, without the usage block); anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .errors import UserError
from .tablefiles import FORMATS


def _train(args) -> int:
    from .config import load_recipe, resolve_recipe_path

    _join_launched_processes()
    recipe = load_recipe(resolve_recipe_path(args.recipe), args.overrides)
    from .train import run

    run(recipe)
    return 0


# a launcher of several processes tells each its number: torchrun WORLD_SIZE, mpirun one of the others
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_MULTI_PROCESS_COMMANDS = ("accelerate launch --multi_gpu --num_processes N ... (on a machine without GPUs its "
                          "processes run on the CPUs), or torchrun --nproc_per_node N ...")


def _join_launched_processes() -> None:
    """Get Accelerate ready to join the processes a launcher started (before the Accelerator exists).

    ``torchrun`` (which ``accelerate launch --multi_gpu`` and a ``MULTI_GPU`` config run) starts
    N processes; on a machine without GPUs, Accelerate joins them over gloo only when told to use
    the CPU (ACCELERATE_USE_CPU), and would otherwise run N separate one-process runs.
    Raises UserError when ``accelerate launch`` was asked for several processes but started this
    one alone, as it does for ``--cpu`` and ``MULTI_CPU`` configs (it starts those ranks through
    mpirun, given ``--mpirun_hostfile``) and for ``--num_processes N`` without GPUs; and when
    ACCELERATE_MIXED_PRECISION is not a precision accelerate knows.
    """
    from .precision import launcher_precision

    launcher_precision()
    env = os.environ
    # accelerate launch sets ACCELERATE_DYNAMO_BACKEND for its script, and MASTER_ADDR only when
    # asked for several processes (or machines); a rank without a world size is then alone
    if "ACCELERATE_DYNAMO_BACKEND" in env and "MASTER_ADDR" in env and not any(v in env for v in _WORLD_SIZE_VARS):
        raise UserError("accelerate launch started one process where several were asked for (it starts --cpu and "
                        f"MULTI_CPU ranks only through mpirun): use {_MULTI_PROCESS_COMMANDS} (for one process, "
                        "unset MASTER_ADDR)")
    if "RANK" not in env and any(v in env for v in _WORLD_SIZE_VARS[1:]):  # each rank would act as the main one
        raise UserError(f"mpirun: peft-tags takes each process's number from RANK, which mpirun does not set; use "
                        f"{_MULTI_PROCESS_COMMANDS}")
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 and not _has_accelerator():
        env["ACCELERATE_USE_CPU"] = "true"


def _has_accelerator() -> bool:
    """Whether Accelerate would give each of several processes a device of its own (a GPU or the like)."""
    import torch

    acc = getattr(torch, "accelerator", None)
    if acc is None:  # torch < 2.6
        return torch.cuda.is_available()
    return acc.is_available() and acc.current_accelerator().type != "mps"  # MPS is one device for one process


def _validate(args) -> int:
    from .preflight import check
    from .config import load_recipe, resolve_recipe_path
    from .config.validate import RecipeError

    failed = 0
    for name in args.recipes:
        where = name
        try:
            where = str(resolve_recipe_path(name))
            pre = check(load_recipe(where, args.overrides))
            print(f"ok    {name}" + "".join(f" ({note})" for note in pre.notes)
                  + (" (training.resume: output.dir already holds this run)" if pre.finished else ""))
        except UserError as e:  # recipe problems start with the file; the checks after loading get it put first
            failed += 1
            text = str(e)
            whole = isinstance(e, RecipeError) or text.startswith(where) or "\n" in text  # a recipe's lines name their files
            print(text if whole else f"{where}: {text}", file=sys.stderr)
    return 2 if failed else 0


def _ls(args) -> int:
    from .config import list_recipes

    rows = list_recipes()
    if not rows:
        print("no recipes found under recipes/")
        return 0
    rows = [tuple(str(c) for c in row) for row in rows]
    header = ("recipe", "method", "task", "backbone")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _predict(args) -> int:
    from .stream import predict

    if args.input and args.output:  # the mode that shares its work among several processes
        _join_launched_processes()
    choices = {k: v for k, v in (("top_k", args.top_k), ("threshold", args.threshold)) if v is not None}
    if getattr(args, "backend", None) == "onnx":
        from .onnxio import split_threads

        choices["threads"] = split_threads()
    return predict(args.output_dir, args.titles, args.input, args.output, input_format=args.input_format,
                   output_format=args.output_format, batch_size=args.batch_size, chunk_size=args.chunk_size,
                   resume=args.resume, progress=not args.no_progress, backend=getattr(args, "backend", None), **choices)


def _push(args) -> int:
    from .hub import push
    from .rundir import check_run_dir

    check_run_dir(Path(args.output_dir))  # a whole run, not any folder
    url = push(Path(args.output_dir), args.repo, private=not args.public, key="push")
    print(f"pushed {args.output_dir} to {args.repo}: {url}", file=sys.stderr)
    return 0


def _export(args) -> int:
    from .export import export

    dest = export(args.output_dir, args.dest, overwrite=args.overwrite, format=args.format, quantize=args.quantize)
    extra = f", and {dest / 'onnx' / 'model.onnx'} ({args.quantize} weights)" if args.format == "onnx" else ""
    print(f"wrote {dest}: a standalone transformers model in {dest / 'model'}{extra}", file=sys.stderr)
    return 0


def _serve(args) -> int:
    from .serve import require, serve

    require()  # before anything imports fastapi
    from .serve.app import Limits

    limits = Limits(max_titles=args.max_titles, max_chars=args.max_chars, max_batch=args.max_batch,
                    max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    return serve(args.runs, args.host, args.port, args.backend, args.threads, limits)


def _retune(args) -> int:
    from .retune import retune

    m = retune(args.output_dir, args.overrides, batch_size=args.batch_size)
    th, before = m["thresholds"], m["retuned"][-1]["before"]
    check = th.get("held_out_dev")
    print(f"{args.output_dir}: {th['rule']} thresholds (global {th['global']}, {th['tuned_per_tag']} tags with their own)"
          + (f"; held-out dev micro-F1 per-tag {check['per-tag']:.4f}, global {check['global']:.4f}" if check else "")
          + (f"; test micro-F1 {before['test_micro_f1']:.4f} -> {m['test_micro_f1']:.4f}" if "test_micro_f1" in m
             and before.get("test_micro_f1") is not None else ""), file=sys.stderr)
    return 0


def _derive_tags(args) -> int:
    from .derive import derive_tags

    stats = derive_tags(args.source, args.dest, types=args.types.split(","), min_count=args.min_count,
                        data_root=args.data_root, overwrite=args.overwrite)
    print(f"{stats['vocabulary']} tags (types {','.join(stats['types'])}, in >= {stats['min_count']} training titles) "
          f"-> {args.dest}")
    for split, s in stats["splits"].items():
        print(f"  {split}: {s['titles']} titles, {s['tags_per_title']} tags per title, {s['titles_without_tags']} without tags; "
              f"{s['out_of_vocabulary']} tag occurrences outside the vocabulary ({s['out_of_vocabulary_pct']}%)")
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage mistakes are one line ``prog: error: ...`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")

    def parse_args(self, args=None, namespace=None):
        args, extra = self.parse_known_args(args, namespace)
        if extra:  # reported by the subcommand's parser, which has the subcommand in its name
            command = getattr(self, "commands", {}).get(getattr(args, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        return args


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got '{text}'")
    return int(text)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds >= 0, got '{text}'")
    return value


def _probability(text: str) -> float:
    """A number strictly between 0 and 1 (a decision threshold); 'nan' and 'inf' are not."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got '{text}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="peft-tags", description="Parameter-efficient fine-tuning for product tagging.")
    sub = p.add_subparsers(dest="command", required=True)  # subparsers are _Parser too
    t = sub.add_parser("train", help="train a recipe (accelerate launch run_recipe.py RECIPE does the same)")
    t.add_argument("recipe", help="recipe file, or a path under recipes/ (jd-ner/lora.yaml)")
    t.add_argument("overrides", nargs="*", default=[], help="key.sub=value overrides, e.g. training.lr=5e-4")
    t.set_defaults(func=_train)
    v = sub.add_parser("validate", help="check recipes as training would before its first step (backbone, target "
                                         "modules, data files, output directory), without training")
    v.add_argument("recipes", nargs="+")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(func=_validate)
    ls = sub.add_parser("ls", help="list the shipped recipes")
    ls.set_defaults(func=_ls)
    pr = sub.add_parser("predict", help="tag titles with a trained output directory")
    pr.add_argument("output_dir")
    pr.add_argument("titles", nargs="*", default=[])
    pr.add_argument("--input", help="a table of titles: JSON lines with a string field 'text', CSV with a 'text' "
                                    "column or Parquet with a string column 'text' (the format from the extension: "
                                    ".jsonl, .csv, .parquet); its other fields are passed through")
    pr.add_argument("--output", help="write the rows with their 'tags' here (JSON lines, CSV or Parquet) instead of "
                                     "printing; never over an existing file")
    pr.add_argument("--input-format", choices=FORMATS, default=None, help="instead of the extension's")
    pr.add_argument("--output-format", choices=FORMATS, default=None, help="instead of the extension's")
    pr.add_argument("--chunk-size", type=_positive_int, default=None,
                    help="titles read, tagged and written at a time (default 2048; with --resume, the job's own)")
    pr.add_argument("--resume", action="store_true",
                    help="continue an interrupted --output job from the chunks it finished")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar (there is none when stderr is not "
                                                               "a terminal)")
    pr.add_argument("--batch-size", type=_positive_int, default=32)
    pr.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                    help="onnx: the ONNX model of a directory written by 'export --format onnx'")
    pr.add_argument("--top-k", type=_positive_int, default=None, help="multi-label runs: at most K tags per title")
    pr.add_argument("--threshold", type=_probability, default=None,
                    help="multi-label runs: one decision threshold for every tag instead of the ones tuned on dev")
    pr.set_defaults(func=_predict)
    ex = sub.add_parser("export", help="merge the adapter into the backbone (de-quantised first, for QLoRA) and "
                                       "write a standalone transformers model")
    ex.add_argument("output_dir", help="a trained output directory")
    ex.add_argument("dest", help="directory to write: an output directory whose model/ holds the merged model")
    ex.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    ex.add_argument("--format", choices=("hf", "onnx"), default="hf",
                    help="onnx: also DEST/onnx/model.onnx, for --backend onnx (onnxruntime on the CPU)")
    ex.add_argument("--quantize", choices=("none", "int8"), default="none",
                    help="with --format onnx: dynamic int8 weights (4x smaller, integer kernels)")
    ex.set_defaults(func=_export)
    pu = sub.add_parser("push", help="upload a trained output directory to a Hugging Face hub repository, in one commit")
    pu.add_argument("output_dir", help="a trained (or exported) output directory")
    pu.add_argument("repo", help="the hub repository, owner/name (created if missing)")
    pu.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    pu.set_defaults(func=_push)
    sv = sub.add_parser("serve", help="tag titles over HTTP (POST /v1/tag, a page at /), runs on one backbone "
                                      "sharing it")
    sv.add_argument("runs", nargs="+", metavar="RUN", help="trained output directories, or NAME=DIR to name one")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=_port, default=8000)
    sv.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                    help="onnx: the ONNX models of directories written by 'export --format onnx'")
    sv.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for the models")
    sv.add_argument("--max-batch", type=_positive_int, default=32, help="titles per forward pass")
    sv.add_argument("--max-wait-ms", type=_non_negative, default=5.0,
                    help="how long a request waits for others to share its forward pass")
    sv.add_argument("--max-queue", type=_positive_int, default=2048, help="titles waiting; beyond it requests get 503")
    sv.add_argument("--max-titles", type=_positive_int, default=256, help="titles per request")
    sv.add_argument("--max-chars", type=_positive_int, default=1000, help="characters per title")
    sv.set_defaults(func=_serve)
    rt = sub.add_parser("retune", help="multi-label runs: tune the decision thresholds on dev again (another rule, "
                                       "support or top-k) and re-score, without training")
    rt.add_argument("output_dir", help="a trained multi-label output directory (rewritten in place, model untouched)")
    rt.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="task.thresholds, task.min_tag_support, task.top_k; data.root, data.dev, data.test")
    rt.add_argument("--batch-size", type=_positive_int, default=64)
    rt.set_defaults(func=_retune)
    dt = sub.add_parser("derive-tags", help="derive a multi-label tag set (train/dev/test.jsonl) from span-tagged titles")
    dt.add_argument("source", help="folder with train.txt, dev.txt, test.txt (CoNLL), under the data root or a path")
    dt.add_argument("dest", help="folder to write")
    dt.add_argument("--types", default="11,5,7,16,14,8,12",
                    help="comma-separated span types whose values become tags (default: jd-ner's function, use, "
                         "place of use, colour, style, target user, material)")
    dt.add_argument("--min-count", type=_positive_int, default=8, help="keep tags found in at least N training titles")
    dt.add_argument("--data-root", default=None, help="default: $PEFT_TAGS_DATA, else ../shared/data")
    dt.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    dt.set_defaults(func=_derive_tags)
    p.commands = dict(sub.choices)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # several processes: one report is enough
            print(f"error: {e}" if "\n" not in str(e) else str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def train_main(argv: list[str] | None = None) -> int:
    """``run_recipe.py RECIPE [key=value ...]``: the same as ``peft-tags train``."""
    return main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
