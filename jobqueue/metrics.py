"""Reading what jobs achieved: the JSON-lines file any script writes (log_metrics), and TensorBoard event files.

Each reader starts at a byte offset and stops after the last whole line or record, so a file still being
written, or cut short by a kill, is read on from there next time. They yield bounded chunks: a file of any
size streams through. Bad input is counted and skipped, never raised. No database here: jobqueue/results.py
stores the chunks. tensorboardX is imported only when an event file is read.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from jobqueue.training import MAX_KEY, METRICS_FILE_ENV  # noqa: F401 - the worker sets it

JSONL = "jsonl"
TFEVENTS = "tfevents"
MAX_LINE = 1 << 20  # bytes: a longer JSON line is skipped without being held in memory
MAX_RECORD = 64 << 20  # bytes: a longer event record (never a scalar) is skipped unread
CHUNK_POINTS = 10_000  # points per chunk: what one read holds in memory, and one transaction stores
EVENT_FILE_GLOB = "events.out.tfevents."
SEARCH_DEPTH = 4  # Sample Factory's are at {experiment}/.summary/0/: two levels down
SEARCH_ENTRIES = 10_000  # directory entries looked at per job, so a dataset in the experiment dir is not walked
_STEP_RANGE = range(-(2**63), 2**63)  # the BigInteger column's


class Point(NamedTuple):
    key: str
    step: int | None
    value: float  # NaN and ±inf as they are
    wall_time: float | None


@dataclass
class Chunk:
    """What one read of a file gave: the points of the whole lines or records in [start, end), and how many were bad."""

    path: str
    kind: str  # JSONL or TFEVENTS
    start: int
    end: int
    points: list[Point] = field(default_factory=list)
    skipped: int = 0


@dataclass
class Source:
    """A file a job's metrics come from, and how far it has been read (a row of metric_sources)."""

    path: str
    kind: str
    attempt_id: int  # the attempt that first read it: its points belong to that attempt
    bytes_read: int = 0


# --- JSON lines ---------------------------------------------------------------------------------


def metrics_file_for(log_path: str) -> str:
    """The JSON-lines file of an attempt ($JQ_METRICS_FILE): next to its log, named after it."""
    return log_path.removesuffix(".log") + ".metrics.jsonl"


def experiment_dir_for(log_path: str, job_name: str) -> str:
    """Where a job's TensorBoard event files are looked for: Sample Factory's {--train_dir}/{--experiment}. A job's
    --train_dir is its log_dir, whose jq_logs/ holds the attempts' logs; its --experiment is its name. Not the
    train dir itself, which the jobs of one Experiment share."""
    return os.path.join(os.path.dirname(os.path.dirname(log_path)), job_name)


def read_jsonl(path: str, offset: int = 0, chunk_points: int = CHUNK_POINTS) -> Iterator[Chunk]:
    """The whole lines from `offset` on, in chunks. Each line is an object of numbers with an optional integer
    "step" and an optional "wall_time" (seconds since the epoch; else the time of this read). A line that is not
    such an object, or holds a key longer than MAX_KEY, is skipped whole and counted. A last line without its
    newline is left for the next read: its writer may not have finished it."""
    now = time.time()
    with open(path, "rb") as f:
        f.seek(offset)
        start = end = offset
        points: list[Point] = []
        skipped = 0
        readline = f.readline
        while line := readline(MAX_LINE + 1):
            if line[-1:] != b"\n":
                if len(line) <= MAX_LINE:
                    break
                end += len(line) + _skip_line(f)
                skipped += 1
                continue
            end += len(line)
            parsed = _parse_line(line, now)
            if parsed is None:
                skipped += 1
            else:
                points += parsed
            if len(points) >= chunk_points:
                yield Chunk(path, JSONL, start, end, points, skipped)
                start, points, skipped = end, [], 0
        if end != start:
            yield Chunk(path, JSONL, start, end, points, skipped)


def _skip_line(f) -> int:
    """Read past the rest of an overlong line, a bounded piece at a time; the bytes skipped."""
    skipped = 0
    while piece := f.readline(MAX_LINE):
        skipped += len(piece)
        if piece.endswith(b"\n"):
            break
    return skipped


_raw_decode = json.JSONDecoder().raw_decode  # json.loads() less its work per call: options, encoding, blanks
_new_point = tuple.__new__  # Point(...) less a Python-level call per point


def _parse_line(line: bytes, now: float) -> list[Point] | None:
    """The points of one line; None when the line is bad ([] for a blank one, which is not counted)."""
    try:
        text = line.decode()
        record, end = _raw_decode(text)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON; absurdly deep nesting; or blanks before the JSON
        if not line.strip():
            return []
        return _parse_line(line.lstrip(), now) if line[:1].isspace() else None
    if type(record) is not dict or text[end:].strip():
        return None
    step = record.pop("step", None)
    if step is not None and (type(step) is not int or step not in _STEP_RANGE):
        return None
    wall_time = record.pop("wall_time", now)
    if type(wall_time) is not float:
        if type(wall_time) is not int:
            return None
        try:
            wall_time = float(wall_time)
        except OverflowError:
            return None
    points = []
    for key, value in record.items():
        if type(value) is not float:
            if type(value) is not int:
                return None
            try:
                value = float(value)
            except OverflowError:  # an integer past any float
                return None
        if not key or len(key) > MAX_KEY:
            return None
        points.append(_new_point(Point, (key, step, value, wall_time)))
    return points


# --- TensorBoard event files --------------------------------------------------------------------

_DT_FLOAT, _DT_DOUBLE = 1, 2  # tensorboardX/proto/types.proto


def event_reader_available() -> bool:
    try:
        _tensorboardx()
    except ImportError:
        return False
    return True


def event_reader_missing(directory: str) -> str:
    return (
        f"jq: TensorBoard event files below {directory} are not read: that needs tensorboardX "
        "(pip install 'jobqueue[tensorboard]')"
    )


@functools.cache
def _tensorboardx():
    """tensorboardX's Event message and the TFRecord checksum its writer uses (the native crc32c when installed)."""
    from google.protobuf.message import DecodeError
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    return Event, masked_crc32c, DecodeError


def find_event_files(experiment_dir: str, depth: int = SEARCH_DEPTH, entries: int = SEARCH_ENTRIES) -> list[str]:
    """The event files below `experiment_dir` (hidden directories too: Sample Factory writes to .summary/),
    at most `depth` levels down and looking at no more than `entries` directory entries."""
    found: list[str] = []
    level, seen = [experiment_dir], 0
    for _ in range(depth + 1):
        below = []
        for directory in level:
            try:
                with os.scandir(directory) as listing:
                    for entry in listing:
                        seen += 1
                        if seen > entries:
                            return sorted(found)
                        if entry.is_dir(follow_symlinks=False):
                            below.append(entry.path)
                        elif entry.name.startswith(EVENT_FILE_GLOB) and entry.is_file():
                            found.append(entry.path)
            except OSError:  # not there (yet), or not ours to read
                continue
        level = below
    return sorted(found)  # a writer names its file after the time it opened it: an older attempt's sorts first


def read_event_file(path: str, offset: int = 0, chunk_points: int = CHUNK_POINTS) -> Iterator[Chunk]:
    """The scalars of the whole records from `offset` on, in chunks. Records are TFRecord frames (length,
    checksum, data, checksum) holding Event messages; a record cut short is left for the next read. A record
    whose data checksum or message is bad is skipped and counted. A bad length checksum leaves nowhere sound to
    go on from: the rest of the file as it is now is skipped, counted once."""
    Event, masked_crc32c, DecodeError = _tensorboardx()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(offset)
        chunk = Chunk(path, TFEVENTS, offset, offset)
        while len(header := f.read(12)) == 12:
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                chunk.end, chunk.skipped = max(size, chunk.end + 12), chunk.skipped + 1
                break
            if chunk.end + 12 + length + 4 > size:
                break  # its writer has not written all of it (yet)
            if length > MAX_RECORD:
                f.seek(length + 4, os.SEEK_CUR)
                chunk.end += 12 + length + 4
                chunk.skipped += 1
                continue
            data, footer = f.read(length), f.read(4)
            chunk.end += 12 + length + 4
            try:
                if struct.unpack("<I", footer)[0] != masked_crc32c(data):
                    raise DecodeError("data checksum")
                event = Event.FromString(data)
            except DecodeError:
                chunk.skipped += 1
                continue
            for value in event.summary.value:
                number = _scalar(value)
                if number is None:
                    continue  # an image, a histogram, text: not ours to keep
                if not value.tag or len(value.tag) > MAX_KEY:
                    chunk.skipped += 1
                    continue
                chunk.points.append(Point(value.tag, event.step, number, event.wall_time))
            if len(chunk.points) >= chunk_points:
                yield chunk
                chunk = Chunk(path, TFEVENTS, chunk.end, chunk.end)
        if chunk.end != chunk.start:
            yield chunk


def _scalar(value) -> float | None:
    """The number of a scalar summary value: tensorboardX's and PyTorch's simple_value, or TF2's scalar tensor."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return _shortest_float32(value.simple_value)
    if kind != "tensor" or value.tensor.tensor_shape.dim:
        return None
    tensor = value.tensor
    if tensor.dtype == _DT_FLOAT:
        if tensor.float_val:
            return _shortest_float32(tensor.float_val[0])
        return (
            _shortest_float32(struct.unpack("<f", tensor.tensor_content)[0])
            if len(tensor.tensor_content) == 4
            else None
        )
    if tensor.dtype == _DT_DOUBLE:
        if tensor.double_val:
            return tensor.double_val[0]
        return struct.unpack("<d", tensor.tensor_content)[0] if len(tensor.tensor_content) == 8 else None
    return None


def _shortest_float32(x: float) -> float:
    """A float32 as the shortest decimal that is the same float32: 0.3 rather than 0.30000001192092896."""
    if not math.isfinite(x):
        return x
    for digits in (6, 7, 8):
        shorter = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", shorter))[0] == x:
            return shorter
    return x


# --- a job's files ------------------------------------------------------------------------------


def job_sources(
    known: dict[str, Source],
    attempt_id: int,
    experiment_dir: str | None,
    metrics_file: str | None,
    starts: Sequence[tuple[int, float]] = (),
) -> tuple[list[Source], str | None]:
    """Every file to read for a job: those read before (by any attempt), and any new ones. A new event file
    belongs to the attempt that was running when its writer opened it (`starts`: the job's attempts up to this
    one, oldest first, as (id, start in seconds since the epoch)), so an orphaned attempt's file, never read
    before it was killed, keeps its own attempt; with no such attempt, or none given, it is `attempt_id`'s.
    With a message to show when event files are there but cannot be read."""
    sources = dict(known)
    candidates = [(metrics_file, JSONL)] if metrics_file else []
    candidates += [(path, TFEVENTS) for path in find_event_files(experiment_dir)] if experiment_dir else []
    for path, kind in candidates:
        if path not in sources and os.path.isfile(path):
            owner = _writer_of(path, starts) if kind == TFEVENTS else None
            sources[path] = Source(path, kind, owner or attempt_id)
    message = None
    events = [s.path for s in sources.values() if s.kind == TFEVENTS]
    if events and not event_reader_available():
        sources = {p: s for p, s in sources.items() if s.kind != TFEVENTS}
        message = event_reader_missing(experiment_dir or os.path.dirname(events[0]))
    return list(sources.values()), message


def opened_at(path: str) -> float | None:
    """When an event file's writer opened it: the whole seconds its name carries (tensorboardX's, PyTorch's and
    TensorFlow's `events.out.tfevents.{time}.{host}...`), else the file's last change."""
    stamp = os.path.basename(path)[len(EVENT_FILE_GLOB) :].split(".", 1)[0]
    if stamp.isdigit():
        return float(stamp)
    try:
        return os.path.getmtime(path)
    except OSError:
        return None


def _writer_of(path: str, starts: Sequence[tuple[int, float]]) -> int | None:
    """The last attempt that had started when the file was opened; the name's time is cut to whole seconds,
    hence the second of slack."""
    opened = opened_at(path)
    if opened is None:
        return None
    owner = None
    for attempt_id, started in starts:
        if started <= opened + 1:
            owner = attempt_id
    return owner


def read_new(source: Source, chunk_points: int = CHUNK_POINTS) -> Iterator[Chunk]:
    """What was written to the source's file since it was last read; nothing if it is gone or unchanged."""
    try:
        if os.path.getsize(source.path) <= source.bytes_read:
            return
        reader = read_jsonl if source.kind == JSONL else read_event_file
        yield from reader(source.path, source.bytes_read, chunk_points)
    except OSError:  # gone, or not readable: there is nothing new to read from it, and the job goes on
        return
