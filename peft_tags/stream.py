"""``peft-tags predict``: titles tagged in chunks, in constant memory, resumable after a kill, in
one process or several.

The input is checked whole first (:mod:`peft_tags.tablefiles`; a mistake is one line naming the
file and line) so that a bad line near the end does not cost hours of tagging. The job then
lives in a work area beside the output, ``.<name>.peft-tags-predict/``, a folder peft-tags marks
as its own (:mod:`peft_tags.owned`). Its marker identifies the job (the input's path, size,
mtime and the hash of its first MiB; the run directory and its files; formats, options, chunk
size); each finished chunk is a file named by its index, written under a temporary name,
fsynced and renamed. ``--resume`` compares the marker with the job asked for (one line naming
what differs), keeps the chunks that are there and tags the rest. At the end the chunks are
concatenated in order into ``merged`` in the work area, the marker records that file's
identity, the file is hard-linked to the output (which never replaces a file) and the work
area is removed; a ``--resume`` after a kill between the link and the removal finds the output
to be that file and finishes the removal. A kill at any other moment leaves the work area,
from which ``--resume`` continues. The output is only ever the complete result.

Several processes (``torchrun --nproc_per_node N -m peft_tags predict ...``, or ``accelerate
launch --multi_gpu --num_processes N ...``, which runs torchrun; Accelerate's ``PartialState``
joins them, on the CPUs where there are no GPUs): process 0 checks and creates the work area
under the output's lock (:class:`peft_tags.lock.OutputLock`) and tells the others which
chunks are left; process r tags every N-th of those from the r-th on, into the same work area;
after ``wait_for_everyone()`` process 0 merges. Only process 0 shows progress and the summary.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from .errors import UserError
from .lock import OutputLock
from .owned import fsync_dir, is_empty_dir, make_dir, new_id, read_marker, recover, remove_owned, write_marker
from .statefile import fsync_file
from .tablefiles import Chunk, Reader, TitlesReader, format_of, make_writer, open_reader

CHUNK_SIZE = 2048
KIND = "predict"
PART = re.compile(r"(\d{9})\.part")
MERGED = "merged"
HEAD_BYTES = 1 << 20


class _Every:
    def __contains__(self, index) -> bool:
        return True


class _Share:
    """The chunks of one process: of those not ``done`` (sorted), every ``world``-th from the ``rank``-th."""

    def __init__(self, done: list[int], rank: int, world: int):
        self.done, self.skip, self.rank, self.world = done, set(done), rank, world

    def __contains__(self, index: int) -> bool:
        return index not in self.skip and (index - bisect.bisect_left(self.done, index)) % self.world == self.rank


def work_area(output: Path) -> Path:
    return output.with_name(f".{output.name}.peft-tags-predict")


def predict(run_dir, titles=(), input=None, output=None, *, input_format=None, output_format=None,
            batch_size: int = 32, chunk_size: int | None = None, resume: bool = False, progress: bool = True,
            backend: str | None = None, threads: int | None = None, **options) -> int:
    """Tag ``titles`` or the rows of ``input``; print them, or write ``output`` (see the module's doc).
    ``options``: the task's own (``top_k``, ``threshold``). An input without titles is refused."""
    if titles and input:
        raise UserError("predict: give titles as arguments or --input FILE, not both")
    if not titles and not input:
        raise UserError("predict: give titles as arguments or --input FILE.jsonl")
    if input is None:
        reader, in_fmt = TitlesReader(list(titles)), "titles"
    else:
        in_fmt = format_of(input, input_format, "--input")
        reader = open_reader(Path(input), in_fmt)
    load = {"backend": backend} if backend is not None else {}
    if threads is not None:
        load["threads"] = threads
    job = Job(run_dir, reader, in_fmt, batch_size, chunk_size, load, options)
    if output is None:
        return job.print_tags()
    return job.write(Path(output), format_of(output, output_format, "--output"), resume, progress)


class Ranks:
    """This process's place among the job's processes: one, unless started with WORLD_SIZE > 1."""

    def __init__(self):
        self.state, self.rank, self.world = None, 0, 1
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            import torch
            from accelerate import PartialState
            from accelerate.utils import parse_flag_from_env

            self.state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
            self.rank, self.world = self.state.process_index, self.state.num_processes
            if self.state.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def load_options(self) -> dict:
        return {} if self.state is None or self.state.device.type == "cpu" else {"device": str(self.state.device)}

    def share(self, attempt):
        """Process 0 runs ``attempt`` (the others wait); every process gets its value, or raises its UserError."""
        result = None
        if self.main:
            try:
                result = ("ok", attempt())
            except UserError as e:
                result = ("error", str(e))
        if self.state is not None:
            from accelerate.utils import broadcast_object_list

            box = [result]
            broadcast_object_list(box, from_process=0)
            result = box[0]
        if result[0] == "error":
            raise UserError(result[1])
        return result[1]

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


class Job:
    def __init__(self, run_dir, reader: Reader, in_fmt: str, batch_size: int, chunk_size: int | None, load: dict,
                 options: dict):
        self.run_dir, self.reader, self.in_fmt, self.batch_size = Path(run_dir), reader, in_fmt, batch_size
        self.chunk_size, self.load, self.options = chunk_size, load, options

    def _scan(self, schema: bool = False):
        scan = self.reader.scan(schema)
        if not scan.rows:
            raise UserError(f"--input: no titles in '{self.reader.path}'")
        return scan

    def _tagger(self, ranks: Ranks | None = None):
        from .predict import Tagger

        tagger = Tagger.load(self.run_dir, **self.load, **(ranks.load_options() if ranks else {}))
        tagger.tag([], batch_size=self.batch_size, **self.options)  # the options checked before any work
        return tagger

    def _tag(self, tagger, chunk: Chunk) -> list:
        return tagger.tag(chunk.titles, batch_size=self.batch_size, **self.options)

    # ------------------------------------------------------------------------- printing
    def print_tags(self) -> int:
        """Each title on a line, then its tags indented, chunk by chunk."""
        self._scan()
        tagger = self._tagger()
        for chunk in self.reader.chunks(self.chunk_size or CHUNK_SIZE, _Every()):
            lines = []
            for title, tags in zip(chunk.titles, self._tag(tagger, chunk)):
                lines += [title, *(f"  {t.line()}" for t in tags)]
            print("\n".join(lines), flush=True)
        return 0

    # ------------------------------------------------------------------------- writing a file
    def write(self, out: Path, out_fmt: str, resume: bool, progress: bool) -> int:
        if not Path(os.path.abspath(out)).parent.is_dir():
            raise UserError(f"--output: no directory '{out.parent}' to write into")
        self.out, self.out_fmt, self.work, self.resume = out, out_fmt, work_area(out), resume
        ranks = Ranks()
        lock = OutputLock(self.work, "--output") if ranks.main else None
        try:
            if ranks.share(lambda: (lock.acquire(), self._look())[1]):
                if ranks.main:
                    remove_owned(self.work)
                    print(f"{out}: already complete (finished the removal of '{self.work}')", file=sys.stderr)
                return 0
            scan = self._scan(schema=out_fmt == "parquet")
            writer = make_writer(out_fmt, scan)
            tagger = self._tagger(ranks)
            ident = self._identity(scan.rows)
            size, done = ranks.share(lambda: self._prepare(ident))
            chunks = math.ceil(scan.rows / size)
            mine = _Share(done, ranks.rank, ranks.world)
            bar = _Progress(scan.rows, min(scan.rows, len(done) * size), size, self.work, ranks.world,
                            progress and ranks.main)
            for chunk in self.reader.chunks(size, mine):
                tags = self._tag(tagger, chunk)
                self._commit(writer, chunk, [[t.as_dict() for t in ts] for ts in tags])
                bar.advance(len(chunk.titles))
            ranks.wait()
            bar.close()
            if ranks.main:
                self._finish(writer, chunks)
                again = f" ({len(done)} of {chunks} chunks were done before)" if done else ""
                by = f" with {ranks.world} processes" if ranks.world > 1 else ""
                print(f"wrote {scan.rows} titles to {out}{by}{again}", file=sys.stderr)
            return 0
        finally:
            if lock is not None:
                lock.release()

    def _look(self) -> bool:
        """Under the lock: True when ``--resume`` finds the output published by this job (only the
        work area's removal was left); a UserError for anything in the way."""
        recover(self.work)  # a creation of the work area that a kill cut short
        if is_empty_dir(self.work):  # a removal killed between its last two steps: nothing in it to lose
            os.rmdir(self.work)
        if os.path.lexists(self.out):
            if self.resume and self._published():
                return True
            raise UserError(f"--output: '{self.out}' already exists" + ("; there is no unfinished job of it to resume"
                                                                        if self.resume else "")
                            + "; peft-tags does not overwrite files: choose another --output, or move that file "
                            "away yourself")
        if os.path.lexists(self.work):
            job = _job_of(read_marker(self.work))
            if job is None:
                raise UserError(f"--output: '{self.work}' is in the way and was not written by peft-tags predict; it "
                                "is left as it is: move it away yourself, or choose another --output")
            if not self.resume:
                raise UserError(f"--output: '{self.work}' holds an unfinished job for '{self.out}' "
                                f"({len(self._done(math.inf))} chunks done); pass --resume to continue it, "
                                "or remove that folder to start again")
        return False

    def _published(self) -> bool:
        pub = (read_marker(self.work) or {}).get("published")
        try:
            return pub is not None and not self.out.is_symlink() and _stamp(self.out) == pub
        except OSError:
            return False

    def _identity(self, rows: int) -> dict:
        """What must be the same for ``--resume`` to continue a job."""
        ident = {"input": "(titles)", "input_format": self.in_fmt, "output_format": self.out_fmt, "rows": rows,
                 "run": str(self.run_dir.resolve()), "run_files": _run_files(self.run_dir),
                 "options": {**{k: v for k, v in self.load.items() if k != "threads"}, **self.options}}
        path = self.reader.path
        if isinstance(self.reader, TitlesReader):
            ident["input_sha256"] = hashlib.sha256(json.dumps(self.reader.titles).encode()).hexdigest()
        else:
            st = path.stat()
            with open(path, "rb") as f:
                head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
            ident.update(input=str(path.resolve()), input_size=st.st_size, input_mtime_ns=st.st_mtime_ns,
                         input_head_sha256=head)
        return ident

    def _prepare(self, ident: dict) -> tuple[int, list[int]]:
        """Process 0: the work area created (a new job) or checked (``--resume``); the chunk size
        and the chunks already done."""
        job = _job_of(read_marker(self.work)) if os.path.lexists(self.work) else None
        if job is None:
            size = self.chunk_size or CHUNK_SIZE
            make_dir(self.work, KIND, new_id(), job={**ident, "chunk_size": size})
            return size, []
        size = self.chunk_size or job["chunk_size"]
        _compare(self.work, job, {**ident, "chunk_size": size})
        return size, sorted(self._done(math.ceil(ident["rows"] / size)))

    def _done(self, chunks) -> set[int]:
        found = set()
        for name in os.listdir(self.work):
            m = PART.fullmatch(name)
            if m and int(m.group(1)) < chunks:
                found.add(int(m.group(1)))
        return found

    def _commit(self, writer, chunk: Chunk, tags: list) -> None:
        final = self.work / f"{chunk.index:09d}.part"
        tmp = self.work / f".{final.name}.{os.getpid()}.tmp"
        writer.write_chunk(tmp, chunk, tags)
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(self.work)

    def _finish(self, writer, chunks: int) -> None:
        """Process 0: merge the chunks in order, record the merged file, link it to the output,
        remove the work area."""
        missing = [i for i in range(chunks) if not (self.work / f"{i:09d}.part").is_file()]
        if missing:  # another process stopped without failing: nothing is published
            raise UserError(f"--output: {len(missing)} of {chunks} chunks are missing from '{self.work}' "
                            f"(the first: {missing[0]:09d}.part); run again with --resume")
        merged, tmp = self.work / MERGED, self.work / f".{MERGED}.{os.getpid()}.tmp"
        writer.merge([self.work / f"{i:09d}.part" for i in range(chunks)], tmp)
        fsync_file(tmp)
        os.replace(tmp, merged)  # a new file: an earlier 'merged' may be linked where the user moved the output
        marker = read_marker(self.work)
        write_marker(self.work, KIND, marker["id"], complete=True, job=marker["job"], published=_stamp(merged))
        appeared = UserError(f"--output: '{self.out}' appeared while the job ran; it is left as it is, and the "
                             f"result stays in '{merged}'")
        try:
            os.link(merged, self.out)  # never replaces a file, unlike a rename
        except FileExistsError:
            raise appeared from None
        except OSError:  # a file system without hard links
            if os.path.lexists(self.out):
                raise appeared from None
            os.rename(merged, self.out)
        fsync_dir(self.out.parent)
        remove_owned(self.work)


def _job_of(marker: dict | None) -> dict | None:
    job = marker.get("job") if marker and marker.get("kind") == KIND else None
    return job if isinstance(job, dict) and isinstance(job.get("chunk_size"), int) else None


LABELS = {"input": "input file", "input_size": "input size", "input_mtime_ns": "input modification time",
          "input_head_sha256": "input's first MiB", "input_sha256": "titles", "input_format": "input format",
          "output_format": "output format", "rows": "number of titles", "run": "run directory",
          "run_files": "files of the run directory", "options": "options", "chunk_size": "--chunk-size"}


def _compare(work: Path, then: dict, now: dict) -> None:
    diffs = []
    for key, value in now.items():
        if then.get(key) != value:
            name = LABELS.get(key, key)
            if key in ("run_files", "input_head_sha256", "input_sha256", "input_mtime_ns"):
                diffs.append(f"{name} changed")
            else:
                diffs.append(f"{name} {json.dumps(then.get(key), ensure_ascii=False)} then, "
                             f"{json.dumps(value, ensure_ascii=False)} now")
    if diffs:
        raise UserError(f"--resume: the unfinished job in '{work}' is not this one: {'; '.join(diffs)}; give the same "
                        "input, run directory and options, or remove that folder to start again")


def _run_files(run_dir: Path) -> dict:
    """Size and mtime of each file at the top of the run directory (a retrained or retuned run differs)."""
    out = {}
    try:
        entries = sorted(os.scandir(run_dir), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        if not e.name.startswith(".") and e.is_file():
            st = e.stat()
            out[e.name] = [st.st_size, st.st_mtime_ns]
    return out


def _stamp(path: Path) -> list[int]:
    st = os.stat(path, follow_symlinks=False)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


class _Progress:
    """A tqdm bar on stderr (titles/s, ETA); with several processes it counts the chunk files of all."""

    def __init__(self, total: int, initial: int, size: int, work: Path, world: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=" titles", file=sys.stderr, disable=None,
                            dynamic_ncols=True, smoothing=0.05)
        self.total, self.size, self.work, self.world, self.looked = total, size, work, world, 0.0

    def advance(self, rows: int) -> None:
        if self.bar is None:
            return
        if self.world == 1:
            self.bar.update(rows)
        elif time.monotonic() - self.looked > 1.0:
            self.looked = time.monotonic()
            n = min(self.total, sum(1 for name in os.listdir(self.work) if PART.fullmatch(name)) * self.size)
            self.bar.update(max(0, n - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.total - self.bar.n)
            self.bar.close()
