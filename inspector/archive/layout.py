"""The archive's on-disk layout, version 1: the only code that writes or parses it (docs/ARCHIVE.md specifies it
for readers in other languages).

    ARCHIVE/
      archive.json                       {"format": "inspector.archive/1", "line", "camera", "created"}
      .lock                              flock()ed by the one daemon writing here
      records/YYYY-MM-DD/HH/ID.zip       one record per archived frame (UTC date and hour of acquisition)
      records/YYYY-MM-DD/HH/index.jsonl  one summary line per record of that hour: a cache, the zips are the truth
      models/SHA256.json                 the manifest of every model a record names (by the model file's sha256)
      configs/CONFIG_HASH.json           the config in force when a record was made (+ CONFIG_HASH.ignore.png)
      tmp/                               records being written; whatever a crash leaves here is deleted at start
      review/marks.jsonl                 reviewers' marks (`inspector review`), append-only, the last line wins
      review/masks/ID.png                masks painted by a reviewer
      review/records/ID.zip              hard links of reviewed records, so quota deletion never loses a label

A record is one ZIP file (readable with any unzip, `zipfile`, or `numpy.load`):

    record.json         verdict (the wire message, docs/PROTOCOL.md), the decision unrounded, thresholds in force,
                        frame geometry, model and config hashes, the pixel floor
    image.png           the frame, lossless, exactly the pixels the networks saw (8-bit gray or colour)
    block_scores.npy    float32 (grid_h, grid_w): the recognizer's P(defective block)
    pixel_scores.npy    float32 (classes, h, w): the segmenter's class probabilities, only when it ran; exact
                        where the defect probability 1 - P(background) >= pixel_floor, background elsewhere

Crash safety: a record is written under tmp/, fsync()ed, and renamed into records/ (atomic on POSIX), and deleted
with one unlink(). A reader therefore sees a record whole or not at all. Snapshots (models/, configs/) are
written the same way, before the first record that names them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ARCHIVE_FORMAT = "inspector.archive/1"
RECORD_FORMAT = "inspector.archive.record/1"
ARCHIVE_FILE = "archive.json"
LOCK_FILE = ".lock"
RECORDS = "records"
MODELS = "models"
CONFIGS = "configs"
TMP = "tmp"
REVIEW = "review"
INDEX = "index.jsonl"
RECORD_SUFFIX = ".zip"

RECORD_JSON = "record.json"
IMAGE_PNG = "image.png"
BLOCK_NPY = "block_scores.npy"
PIXEL_NPY = "pixel_scores.npy"

# PNG level 1: a 320x320 gray frame is ~45 kB at level 1 and barely smaller at 9, which costs ~10x the CPU that
# the writer thread shares with inference on a small box.
PNG_LEVEL = 1


class ArchiveFormatError(Exception):
    """A file in the archive is not what this version of the layout says (named in the message)."""


# ------------------------------------------------------------------------------------------------- names


def record_id(t_acquired_ns: int, run_id: str, seq: int) -> str:
    """'20261202T105930123456Z-3f9ac0de-000001234': sorts by acquisition time; unique per daemon run and frame."""
    sec, rem = divmod(t_acquired_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}{rem // 1000:06d}Z-{(run_id or 'norun')[:8]}-{seq:09d}"


def hour_dir(rid: str) -> str:
    """records/YYYY-MM-DD/HH of a record id (the UTC hour of acquisition)."""
    if len(rid) < 22 or rid[8] != "T" or not rid[:8].isdigit():
        raise ArchiveFormatError(f"not a record id: {rid!r}")
    return f"{RECORDS}/{rid[0:4]}-{rid[4:6]}-{rid[6:8]}/{rid[9:11]}"


def record_path(root: Path, rid: str) -> Path:
    return root / hour_dir(rid) / f"{rid}{RECORD_SUFFIX}"


def is_record_id(name: str) -> bool:
    try:
        hour_dir(name)
    except ArchiveFormatError:
        return False
    return "/" not in name and "\\" not in name and ".." not in name


def iso_utc(ns: int) -> str:
    sec, rem = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{rem // 1000:06d}Z"


# --------------------------------------------------------------------------------------------- file I/O


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (a crash after it must not bring the old entry back)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entry was created, so a record renamed into it survives a crash."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)


def atomic_write(path: Path, data: bytes, tmp_dir: Path | None = None, *, mode: int = 0o640) -> None:
    """Write `data` to a temporary file (in tmp_dir, same file system), fsync it, rename it onto `path`.

    A reader sees the old file or the whole new one; after a crash, at most a stray temporary file is left.
    Raises OSError (ENOSPC, EIO, EROFS, ...) after removing the temporary file.
    """
    tmp_dir = tmp_dir if tmp_dir is not None else path.parent
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def append_line(path: Path, obj: dict[str, Any], *, durable: bool) -> None:
    """Append one JSON line with a single write() (O_APPEND). A crash can leave at most a torn last line, which
    readers skip; `durable` fsyncs (marks: yes; the index, a cache: no)."""
    line = (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, line)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a torn or foreign line is skipped, never fatal."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


# --------------------------------------------------------------------------------------------- records


def apply_pixel_floor(pixel_scores: np.ndarray, floor: float) -> None:
    """In place: where the defect probability 1 - P(background) < floor, set the pixel to pure background.

    Computed exactly as inspector.decision does (float32 1 - p0 against the threshold), so for every
    pixel_threshold >= floor the same pixels are defect pixels, with the same class probabilities, and the
    decision is the same; the zeroed pixels compress to nearly nothing.
    """
    if floor <= 0:
        return
    prob = np.subtract(np.float32(1.0), pixel_scores[0], dtype=np.float32)
    low = prob < floor
    pixel_scores[0][low] = 1.0
    pixel_scores[1:, low] = 0.0


def _load_npy(data: bytes) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise ArchiveFormatError("an array member is not a single .npy array")
    return array


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_image(frame: np.ndarray, pixel_format: str) -> bytes:
    """Frame (H, W, C) in the ring's pixel format -> lossless PNG (gray, or colour in PNG's own RGB order)."""
    if frame.ndim == 3 and frame.shape[2] == 1:
        image = frame[:, :, 0]
    elif pixel_format == "rgb8":
        image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)  # imencode takes BGR; the PNG then holds true RGB
    else:
        image = frame
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise ValueError("PNG encoding failed")
    return png.tobytes()


def decode_image(png: bytes, pixel_format: str) -> np.ndarray:
    """PNG -> (H, W, C) uint8 in `pixel_format`: the very pixels the daemon had in its ring."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ArchiveFormatError("image.png cannot be decoded")
    if image.ndim == 2:
        return image[:, :, None]
    if pixel_format == "rgb8":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def encode_record(
    meta: dict[str, Any],
    image_png: bytes,
    block_scores: np.ndarray,
    pixel_scores: np.ndarray | None,
) -> bytes:
    """One record as ZIP bytes. PNG is stored (already compressed); JSON and arrays are deflated."""
    t = time.gmtime(meta["verdict"]["acquired_ns"] // 1_000_000_000)
    stamp = (max(1980, t.tm_year), t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        members: list[tuple[str, bytes, int]] = [
            (RECORD_JSON, json.dumps(meta, indent=1, allow_nan=False).encode(), zipfile.ZIP_DEFLATED),
            (IMAGE_PNG, image_png, zipfile.ZIP_STORED),
            (BLOCK_NPY, _npy(block_scores.astype(np.float32, copy=False)), zipfile.ZIP_DEFLATED),
        ]
        if pixel_scores is not None:
            members.append((PIXEL_NPY, _npy(pixel_scores.astype(np.float32, copy=False)), zipfile.ZIP_DEFLATED))
        for name, data, method in members:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = method
            info.external_attr = 0o640 << 16
            z.writestr(info, data, compresslevel=6 if method == zipfile.ZIP_DEFLATED else None)
    return buf.getvalue()


def summary_of(meta: dict[str, Any], size: int) -> dict[str, Any]:
    """The index line of a record: what the review list filters on, without opening the record."""
    v = meta["verdict"]
    d = meta.get("decision") or {}
    classes = sorted({x["class"] for x in d.get("defects", [])})
    return {
        "id": meta["id"],
        "t": v["acquired_ns"],
        "seq": v["seq"],
        "run_id": v.get("run_id", ""),
        "result": v["result"],
        "reason": v["reason"],
        "decided": d.get("result"),
        "classes": classes,
        "defects": len(d.get("defects", [])),
        "score": d.get("recognizer_score"),
        "segmenter_ran": bool(meta.get("segmenter_ran")),
        "kept_as": meta.get("kept_as", "reject"),
        "config_hash": meta.get("config_hash", ""),
        "bytes": size,
    }


@dataclass(frozen=True)
class Summary:
    """One record as the review list and filters see it (an index line)."""

    id: str
    t: int  # acquisition time, ns since the epoch (UTC)
    seq: int
    run_id: str
    result: str  # as published
    reason: str
    decided: str | None  # what the decision said (differs from result for late timeouts)
    classes: tuple[str, ...]
    defects: int
    score: float | None
    segmenter_ran: bool
    kept_as: str  # "reject" or "sample" (a sampled pass)
    config_hash: str
    bytes: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        return cls(
            id=str(d["id"]),
            t=int(d["t"]),
            seq=int(d.get("seq", -1)),
            run_id=str(d.get("run_id", "")),
            result=str(d["result"]),
            reason=str(d["reason"]),
            decided=d.get("decided"),
            classes=tuple(d.get("classes", ())),
            defects=int(d.get("defects", 0)),
            score=d.get("score"),
            segmenter_ran=bool(d.get("segmenter_ran", False)),
            kept_as=str(d.get("kept_as", "reject")),
            config_hash=str(d.get("config_hash", "")),
            bytes=int(d.get("bytes", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "t": self.t,
            "time": iso_utc(self.t),
            "seq": self.seq,
            "run_id": self.run_id,
            "result": self.result,
            "reason": self.reason,
            "decided": self.decided,
            "classes": list(self.classes),
            "defects": self.defects,
            "score": self.score,
            "segmenter_ran": self.segmenter_ran,
            "kept_as": self.kept_as,
            "config_hash": self.config_hash,
            "bytes": self.bytes,
        }


class Record:
    """One record read from its ZIP file. The file is read once, whole (records are small)."""

    def __init__(self, path: Path, data: bytes | None = None):
        self.path = path
        try:
            self._data = path.read_bytes() if data is None else data
            self._zip = zipfile.ZipFile(io.BytesIO(self._data))
            self.meta: dict[str, Any] = json.loads(self._zip.read(RECORD_JSON))
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise ArchiveFormatError(f"{path}: not a readable archive record: {exc}") from None
        fmt = self.meta.get("format")
        if fmt != RECORD_FORMAT:
            raise ArchiveFormatError(f"{path}: record format {fmt!r}, this version reads {RECORD_FORMAT!r}")

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def size(self) -> int:
        return len(self._data)

    def summary(self) -> Summary:
        return Summary.from_dict(summary_of(self.meta, self.size))

    def member(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except KeyError:
            raise ArchiveFormatError(f"{self.path}: no {name}") from None

    def image_png(self) -> bytes:
        return self.member(IMAGE_PNG)

    def image(self) -> np.ndarray:
        """(H, W, C) uint8 in the frame's pixel format."""
        return decode_image(self.image_png(), self.meta["frame"]["pixel_format"])

    def block_scores(self) -> np.ndarray:
        return _load_npy(self.member(BLOCK_NPY))

    def pixel_scores(self) -> np.ndarray | None:
        if PIXEL_NPY not in self._zip.namelist():
            return None
        return _load_npy(self.member(PIXEL_NPY))

    @property
    def frame_size(self) -> tuple[int, int]:
        f = self.meta["frame"]
        return int(f["height"]), int(f["width"])
