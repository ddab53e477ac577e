"""``peft-tags predict --input/--output``: chunked tagging of JSON lines, CSV and Parquet tables in
constant memory, ``--resume`` after a SIGKILL, refusals that leave every file as it was, and
several processes under ``accelerate launch`` or ``torchrun``."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import toy_titles, write_recipe
from helpers import child_env, cli_fails, drop_log_handlers, run_cli, snapshot

# A child process that sends itself SIGKILL just before its KILL_AT-th file-system event whose
# description matches the regular expression KILL_MATCH (every event with EVENTS=FILE listed
# there), then runs ``peft-tags ARGV``; with STUB=1 the tagger is the stub below (no torch).
# Nothing of this lives in peft-tags itself: the test wraps the real entry point from outside.
STUB = '''
class StubTag:
    def __init__(self, title):
        self.title = title

    def as_dict(self):
        return {"chars": len(self.title)}

    def line(self):
        return f"chars\\t{len(self.title)}"


class StubTagger:
    @classmethod
    def load(cls, *args, **kwargs):
        return cls()

    def tag(self, titles, batch_size=32, **options):
        return [[StubTag(t)] if len(t) % 2 else [] for t in titles]
'''
KILLER = '''
import os, re, signal, sys, types
AT, MATCH, LOG = int(os.environ.get("KILL_AT", "0")), re.compile(os.environ.get("KILL_MATCH", "")), os.environ.get("EVENTS")
seen = 0


def wrap(name):
    original = getattr(os, name)

    def event(*args, **kwargs):
        global seen
        what = " ".join([name, *map(str, args[:2])])
        if MATCH.search(what):
            seen += 1
            if LOG:
                with open(LOG, "a") as f:
                    f.write(what + "\\n")
            if seen == AT:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(os, name, event)


for name in ("mkdir", "replace", "rename", "link", "fsync", "unlink", "rmdir"):
    wrap(name)
if os.environ.get("STUB"):
    exec(os.environ["STUB"])
    sys.modules["peft_tags.predict"] = types.SimpleNamespace(Tagger=StubTagger)
from peft_tags.cli import main
sys.exit(main(sys.argv[1:]))
'''
stub: dict = {}
exec(STUB, stub)


def _killed_child(argv, cwd: Path, at: int = 0, match: str = "", events: Path | None = None, use_stub=False):
    env = child_env(KILL_AT=str(at), KILL_MATCH=match, **({"EVENTS": str(events)} if events else {}),
                    **({"STUB": STUB} if use_stub else {}))
    return subprocess.run([sys.executable, "-c", KILLER, *map(str, argv)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_backbone, toy_data) -> Path:
    tmp = tmp_path_factory.mktemp("stream")
    recipe = write_recipe(tmp / "lora.yaml", tiny_backbone, toy_data, tmp / "out", epochs=1, lr=1e-2)
    assert run_cli(["train", str(recipe)]) == 0
    drop_log_handlers()
    return tmp / "out"


@pytest.fixture(scope="module")
def tagger(run):
    from peft_tags.predict import Tagger

    return Tagger.load(run)


def _titles(n: int, seed: int = 5) -> list[str]:
    return ["".join(text for text, _ in parts) for parts in toy_titles(n, seed)]


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)  # row groups that straddle chunks
    return path


def _read(path: Path) -> list[dict]:
    """The output rows, with 'tags' as a list of objects in every format."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    return [{**r, "tags": json.loads(r["tags"])} for r in rows]


def _rows(titles: list[str]) -> list[dict]:
    return [{"id": f"p{i}", "text": t, "shop": f"s{i % 3}"} for i, t in enumerate(titles)]


def _leftovers(folder: Path, keep) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ----------------------------------------------------------------------------- formats and order
@pytest.mark.parametrize("src,dst", [("jsonl", "jsonl"), ("csv", "csv"), ("parquet", "parquet"), ("jsonl", "parquet"),
                                     ("parquet", "csv")])
def test_round_trip_passes_fields_through_and_matches_tagger(src, dst, run, tagger, tmp_path):
    titles = _titles(20)
    inp = _write(tmp_path / f"in.{src}", _rows(titles))
    out = tmp_path / f"out.{dst}"
    assert run_cli(["predict", run, "--input", inp, "--output", out, "--chunk-size", "8", "--no-progress"]) == 0
    got = _read(out)
    want = [[t.as_dict() for t in tags] for tags in tagger.tag(titles)]
    assert [r["tags"] for r in got] == want
    assert any(want), "the trained toy model tags nothing"
    assert [{k: v for k, v in r.items() if k != "tags"} for r in got] == _rows(titles)
    assert list(got[0]) == ["id", "text", "shop", "tags"]
    assert _leftovers(tmp_path, {inp.name, out.name}) == []


def test_order_is_kept_across_many_small_chunks(run, tagger, tmp_path):
    titles = _titles(40, seed=9)
    inp = _write(tmp_path / "in.jsonl", _rows(titles))
    assert run_cli(["predict", run, "--input", inp, "--output", tmp_path / "a.jsonl", "--chunk-size", "3"]) == 0
    assert run_cli(["predict", run, "--input", inp, "--output", tmp_path / "b.jsonl"]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert [r["id"] for r in _read(tmp_path / "a.jsonl")] == [f"p{i}" for i in range(40)]


def test_titles_as_arguments_are_printed_or_written(run, tagger, tmp_path, capsys):
    assert run_cli(["predict", run, "华为黑色手机壳", "小米白色"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "华为黑色手机壳" and "小米白色" in printed
    assert run_cli(["predict", run, "华为黑色手机壳", "--output", tmp_path / "t.csv"]) == 0
    assert _read(tmp_path / "t.csv") == [{"text": "华为黑色手机壳",
                                          "tags": [t.as_dict() for t in tagger.tag(["华为黑色手机壳"])[0]]}]


# ----------------------------------------------------------------------------- kill and resume
def test_a_killed_job_resumes_to_the_same_bytes(run, tmp_path):
    inp = _write(tmp_path / "in.jsonl", _rows(_titles(20, seed=3)))
    assert run_cli(["predict", run, "--input", inp, "--output", tmp_path / "ref.jsonl", "--chunk-size", "3"]) == 0
    out = tmp_path / "out.jsonl"
    done = _killed_child(["predict", run, "--input", inp, "--output", out, "--chunk-size", "3"], tmp_path, at=3,
                         match=r"^replace .*/\d+\.part$")  # killed just before its third chunk is in place
    assert done.returncode == -9, done.stderr
    work = tmp_path / ".out.jsonl.peft-tags-predict"
    assert not out.exists() and sorted(p.name for p in work.glob("*.part")) == ["000000000.part", "000000001.part"]
    assert run_cli(["predict", run, "--input", inp, "--output", out]) == 2  # an unfinished job needs --resume
    assert run_cli(["predict", run, "--input", inp, "--output", out, "--resume"]) == 0  # its own chunk size
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert [r["id"] for r in _read(out)] == [f"p{i}" for i in range(20)]
    assert _leftovers(tmp_path, {"in.jsonl", "ref.jsonl", "out.jsonl"}) == []


def test_a_kill_at_sampled_file_events_then_resume_loses_and_repeats_nothing(tmp_path, monkeypatch):
    """The last five file events (publish, removal) and two earlier ones at random; the
    sweep of every event is the slow test below (about a minute)."""
    _kill_sweep(tmp_path, monkeypatch, sample=True)


@pytest.mark.slow
def test_a_kill_at_any_file_event_then_resume_loses_and_repeats_nothing(tmp_path, monkeypatch):
    """Every mkdir, rename, link, fsync, unlink and rmdir of a job is a place to be killed (stub tagger)."""
    _kill_sweep(tmp_path, monkeypatch, sample=False)


def _kill_sweep(tmp_path, monkeypatch, sample: bool):
    import random

    from peft_tags.predict import Tagger

    monkeypatch.setattr(Tagger, "load", classmethod(lambda cls, *a, **k: stub["StubTagger"]()))
    inp = _write(tmp_path / "in.csv", _rows(_titles(10)))
    argv = ["predict", tmp_path / "RUN", "--input", inp, "--output", tmp_path / "out.csv", "--chunk-size", "4"]
    done = _killed_child(argv, tmp_path, events=tmp_path / "events", use_stub=True)
    assert done.returncode == 0, done.stderr
    want = (tmp_path / "out.csv").read_bytes()
    assert [r["tags"] for r in _read(tmp_path / "out.csv")] == [[{"chars": len(t)}] if len(t) % 2 else []
                                                                for t in _titles(10)]
    events = (tmp_path / "events").read_text().splitlines()
    (tmp_path / "out.csv").unlink()
    (tmp_path / "events").unlink()
    assert len(events) > 20
    points = list(range(1, len(events) + 1))
    if sample:
        seed = random.randrange(10**6)
        points = sorted(random.Random(seed).sample(points[:-5], 2) + points[-5:])
        print(f"kill points {points} (seed {seed})")
    for at in points:
        done = _killed_child(argv, tmp_path, at=at, use_stub=True)
        assert done.returncode == -9, (at, events[at - 1], done.stderr)
        rc = run_cli([*argv, "--resume"])
        if rc:  # killed after the work area was gone: the output is complete, and not proven ours
            assert at >= len(events) - 1, (at, events[at - 1])
        assert (tmp_path / "out.csv").read_bytes() == want, (at, events[at - 1])
        assert _leftovers(tmp_path, {"in.csv"}) == ["out.csv"], (at, events[at - 1])
        (tmp_path / "out.csv").unlink()


# ----------------------------------------------------------------------------- refusals
def test_an_existing_output_is_refused_and_left_as_it_was(run, tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", _rows(_titles(5)))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"precious\n")
    before = snapshot(tmp_path)
    for extra in ([], ["--resume"]):
        cli_fails(["predict", run, "--input", inp, "--output", out, *extra], capsys, "--output", out, "already exists")
    assert out.read_bytes() == b"precious\n" and snapshot(tmp_path) == before


def test_a_stale_or_foreign_work_area_is_refused(run, tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", _rows(_titles(9)))
    out, work = tmp_path / "out.jsonl", tmp_path / ".out.jsonl.peft-tags-predict"
    done = _killed_child(["predict", run, "--input", inp, "--output", out, "--chunk-size", "3"], tmp_path, at=2,
                         match=r"^replace .*/\d+\.part$", use_stub=True)
    assert done.returncode == -9, done.stderr
    before = snapshot(tmp_path)
    cli_fails(["predict", run, "--input", inp, "--output", out], capsys, work, "--resume")
    line = cli_fails(["predict", run, "--input", inp, "--output", out, "--resume", "--chunk-size", "4"], capsys,
                     "--chunk-size 3 then, 4 now")
    inp.write_text(inp.read_text(encoding="utf-8") + '{"text": "one more"}\n', encoding="utf-8")
    line = cli_fails(["predict", run, "--input", inp, "--output", out, "--resume"], capsys, work, "input size")
    assert "number of titles 9 then, 10 now" in line
    def kept(snap):  # the input was changed above; the lock file of the killed job is taken over and removed
        return {k: v for k, v in snap.items() if k != str(inp) and not k.endswith(".lock")}

    assert kept(snapshot(tmp_path)) == kept(before)
    foreign = tmp_path / "other.jsonl"
    (tmp_path / ".other.jsonl.peft-tags-predict").mkdir()
    (tmp_path / ".other.jsonl.peft-tags-predict" / "mine.txt").write_text("keep")
    for extra in ([], ["--resume"]):
        cli_fails(["predict", run, "--input", inp, "--output", foreign, *extra], capsys, "not written by peft-tags")
    assert (tmp_path / ".other.jsonl.peft-tags-predict" / "mine.txt").read_text() == "keep"


def _bad_inputs(tmp: Path) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def w(name, data):
        (tmp / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return tmp / name

    pq.write_table(pa.table({"title": ["a"]}), tmp / "notext.parquet")
    pq.write_table(pa.table({"text": ["a", None]}), tmp / "null.parquet")
    return [
        (tmp / "missing.jsonl", ["no such file"]),
        (w("latin1.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n'), ["latin1.jsonl:2:", "not UTF-8"]),
        (w("broken.jsonl", '{"text": "a"}\n\n{"text": "b"\n'), ["broken.jsonl:3:", "invalid JSON"]),
        (w("notext.jsonl", '{"text": "a"}\n{"title": "b"}\n'), ["notext.jsonl:2:", "'text'"]),
        (w("number.jsonl", '{"text": 7}\n'), ["number.jsonl:1:", "'text'"]),
        (w("control.jsonl", '{"text": "a"}\n{"text": "a\\u0001b"}\n'), ["control.jsonl:2:", "control character"]),
        (w("empty.jsonl", "\n\n"), ["no titles", "empty.jsonl"]),
        (w("nocol.csv", "id,title\n1,a\n"), ["nocol.csv:1:", "no 'text' column"]),
        (w("short.csv", "id,text\n1,a\n2\n"), ["short.csv:3:", "header has 2"]),
        (w("latin1.csv", b"id,text\n1,caf\xe9\n"), ["latin1.csv:2:", "not UTF-8"]),
        (w("quote.csv", 'id,text\n1,"a\n'), ["quote.csv:2:", "invalid CSV"]),
        (w("garbage.parquet", "not parquet"), ["garbage.parquet", "not a Parquet file"]),
        (tmp / "notext.parquet", ["notext.parquet", "no 'text' column"]),
        (tmp / "null.parquet", ["null.parquet: row 2:", "null"]),
        (w("titles.txt", "a\n"), ["titles.txt", "extension", "--input-format"]),
    ]


def test_bad_inputs_are_one_line_naming_file_and_line(tmp_path, capsys):
    for path, culprits in _bad_inputs(tmp_path):
        before = snapshot(tmp_path)
        cli_fails(["predict", tmp_path, "--input", path, "--output", tmp_path / "out.jsonl"], capsys, *culprits)
        assert snapshot(tmp_path) == before, path
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"text": "a"}\n', encoding="utf-8")
    cli_fails(["predict", tmp_path, "--input", ok, "--output", tmp_path / "no" / "out.jsonl"], capsys, "--output",
              "no directory")
    cli_fails(["predict", tmp_path, "--input", ok, "--output", tmp_path / "out.json"], capsys, "out.json",
              "--output-format")


# ----------------------------------------------------------------------------- memory
MEMORY = '''
import json, os, sys, types
exec(os.environ["STUB"])
sys.modules["peft_tags.predict"] = types.SimpleNamespace(Tagger=StubTagger)
import tqdm
from peft_tags import cli, lock, owned, stream, tablefiles
from peft_tags.tablefiles import writers


def status(key):  # kB; VmHWM is this process's peak (ru_maxrss can carry the parent's over a vfork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


before = status("VmRSS")
rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "growth_mb": (status("VmHWM") - before) / 1024}))
'''


def test_memory_stays_flat_for_a_large_file(tmp_path):
    inp, n = tmp_path / "big.jsonl", 200_000
    pad = "x" * 150
    with open(inp, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(f'{{"id": {i}, "text": "华为黑色手机壳{i}", "note": "{pad}"}}\n')
    assert inp.stat().st_size > 30e6
    done = subprocess.run([sys.executable, "-c", MEMORY, "predict", "RUN", "--input", inp, "--output",
                           tmp_path / "out.jsonl"], env=child_env(STUB=STUB), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0 and report["growth_mb"] < 20, report  # the file alone is 35 MB
    with open(tmp_path / "out.jsonl", encoding="utf-8") as f:
        count = sum(1 for _ in f)
    assert count == n


# ----------------------------------------------------------------------------- several processes
LAUNCHERS = {  # two processes on CPUs, with a free port each time
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0"],
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
}


@pytest.mark.parametrize("launcher", [pytest.param(name, marks=[pytest.mark.slow] if name == "torchrun" else [])
                                      for name in LAUNCHERS])  # torchrun trains under test_launch.py by default
def test_two_processes_under_a_launcher_write_what_one_writes(launcher, run, tmp_path):
    inp = _write(tmp_path / "in.jsonl", _rows(_titles(25, seed=11)))
    assert run_cli(["predict", run, "--input", inp, "--output", tmp_path / "one.jsonl", "--chunk-size", "3"]) == 0
    done = subprocess.run([sys.executable, *LAUNCHERS[launcher],
                           "-m", "peft_tags", "predict", str(run), "--input", str(inp), "--output",
                           str(tmp_path / "two.jsonl"), "--chunk-size", "3"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert sum("wrote 25 titles" in line for line in done.stderr.splitlines()) == 1, done.stderr[-3000:]
    assert "with 2 processes" in done.stderr, done.stderr[-3000:]
    assert _leftovers(tmp_path, {"in.jsonl", "one.jsonl", "two.jsonl"}) == []
