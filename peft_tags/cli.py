"""The ``peft-tags`` command: train, validate, ls, predict, export, retune, derive-tags.

Mistakes a user can make end in one line per problem on stderr and exit code 2 (usage
mistakes as ``peft-tags CMD: error: ...``, without the usage block); anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .errors import UserError


def _train(args) -> int:
    from .config import load_recipe, resolve_recipe_path

    recipe = load_recipe(resolve_recipe_path(args.recipe), args.overrides)
    from .train import run

    run(recipe)
    return 0


def _validate(args) -> int:
    from .preflight import check
    from .config import load_recipe, resolve_recipe_path

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
            print(text if text.startswith(where) or "\n" in text else f"{where}: {text}", file=sys.stderr)
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
    from .predict import Tagger

    if not args.titles and not args.input:
        raise UserError("predict: give titles as arguments or --input FILE.jsonl")
    titles = list(args.titles)
    if args.input:
        titles += _read_titles(Path(args.input))
        if not titles:
            raise UserError(f"--input: no titles in '{args.input}'")
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise UserError(f"--output: no directory '{Path(args.output).parent}' to write into")
    tagger = Tagger.load(args.output_dir)
    choices = {k: v for k, v in (("top_k", args.top_k), ("threshold", args.threshold)) if v is not None}
    results = tagger.tag(titles, batch_size=args.batch_size, **choices)
    if args.output:
        tmp = Path(args.output).with_name(Path(args.output).name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for title, tags in zip(titles, results):
                f.write(json.dumps({"text": title, "tags": [t.as_dict() for t in tags]}, ensure_ascii=False) + "\n")
        tmp.replace(args.output)
        print(f"wrote {len(titles)} titles to {args.output}", file=sys.stderr)
        return 0
    for title, tags in zip(titles, results):
        print(title)
        for t in tags:
            print(f"  {t.line()}")
    return 0


def _export(args) -> int:
    from .export import export

    dest = export(args.output_dir, args.dest, overwrite=args.overwrite)
    print(f"wrote {dest}: a standalone transformers model in {dest / 'model'}", file=sys.stderr)
    return 0


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


def _read_titles(path: Path) -> list[str]:
    """The 'text' field of each JSON line; UserError naming the line for anything else."""
    from .data import check_title

    if not path.is_file():
        raise UserError(f"--input: no such file '{path}'")
    titles = []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:{n}: not UTF-8 (byte {e.start + 1})") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise UserError(f"{path}:{n}: expected an object with a string field 'text'")
        titles.append(check_title(text, f"{path}:{n}"))
    return titles


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
    pr.add_argument("--input", help="JSON lines with a 'text' field")
    pr.add_argument("--output", help="write JSON lines here instead of printing")
    pr.add_argument("--batch-size", type=_positive_int, default=32)
    pr.add_argument("--top-k", type=_positive_int, default=None, help="multi-label runs: at most K tags per title")
    pr.add_argument("--threshold", type=_probability, default=None,
                    help="multi-label runs: one decision threshold for every tag instead of the ones tuned on dev")
    pr.set_defaults(func=_predict)
    ex = sub.add_parser("export", help="merge the adapter into the backbone (de-quantised first, for QLoRA) and "
                                       "write a standalone transformers model")
    ex.add_argument("output_dir", help="a trained output directory")
    ex.add_argument("dest", help="directory to write: an output directory whose model/ holds the merged model")
    ex.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    ex.set_defaults(func=_export)
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
    from .launch import requested_cpu_processes, run_workers

    argv = sys.argv[1:] if argv is None else argv
    n = requested_cpu_processes()
    if n > 1:  # accelerate launch --cpu --num_processes N started only this one process
        return run_workers(n, [sys.argv[0], *argv])
    return main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
