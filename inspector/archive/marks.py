"""Reviewers' marks, stored beside the archive (ARCHIVE/review/), crash-safe.

    review/marks.jsonl        one JSON object a line, appended with one write() and fsync()ed; the last line for
                              a record wins; a torn last line (a crash mid-append) is skipped
    review/masks/ID.png       a mask a reviewer painted (non-zero = defect, the frame's size), written atomically
    review/records/ID.zip     a hard link (or copy) of every marked record: the daemon's quota deletes only
                              from records/, so a labelled frame is never lost to it

A mark says what the part really was, relative to what the inspection decided (the decision, before any
fail-safe): `correct` (it was right), `false_reject` (rejected, but the part is good), `missed_defect` (the
part has a defect the inspection did not reject for). `truth` (defective / good) follows from the two and is
stored, so readers need not re-derive it. `mask`: "segmenter" (the segmenter's defect pixels at the record's
pixel_threshold are the label), "reviewer" (review/masks/ID.png), or null (no pixel label).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inspector.archive import layout

LABELS = ("correct", "false_reject", "missed_defect")
MASK_SOURCES = ("segmenter", "reviewer")
MARKS_FILE = "marks.jsonl"
MASKS = "masks"


class MarkError(ValueError):
    """A mark that cannot be stored as given (the message says why)."""


def truth_of(label: str, decided: str) -> str:
    """defective / good, from the reviewer's label and what the inspection decided (pass / reject)."""
    if label == "missed_defect":
        return "defective"
    if label == "false_reject":
        if decided != "reject":
            raise MarkError("a frame the inspection passed cannot be a false reject")
        return "good"
    if label == "correct":
        return "defective" if decided == "reject" else "good"
    raise MarkError(f"label must be one of {', '.join(LABELS)}, not {label!r}")


@dataclass(frozen=True)
class Mark:
    record: str
    label: str
    truth: str  # defective / good
    cls: str | None = None  # the defect class of the label (defective only)
    mask: str | None = None  # segmenter / reviewer / None
    reviewer: str = ""
    time: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("cls")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Mark:
        return cls(
            record=str(d["record"]),
            label=str(d["label"]),
            truth=str(d["truth"]),
            cls=d.get("class"),
            mask=d.get("mask"),
            reviewer=str(d.get("reviewer", "")),
            time=str(d.get("time", "")),
            note=str(d.get("note", "")),
        )


class MarkStore:
    def __init__(self, archive_root: str | Path):
        self.root = Path(archive_root)
        self.dir = self.root / layout.REVIEW
        self.path = self.dir / MARKS_FILE
        self._stamp: tuple[int, int] | None = None
        self._marks: dict[str, Mark] = {}

    def all(self) -> dict[str, Mark]:
        """record id -> its current mark (re-read when the file changed, e.g. another reviewer's server)."""
        try:
            st = self.path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            marks: dict[str, Mark] = {}
            for line in layout.read_lines(self.path):
                rid = line.get("record")
                if not isinstance(rid, str):
                    continue
                if line.get("label") is None:  # a cleared mark
                    marks.pop(rid, None)
                    continue
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    marks[rid] = Mark.from_dict(line)
            self._marks, self._stamp = marks, stamp
        return self._marks

    def get(self, rid: str) -> Mark | None:
        return self.all().get(rid)

    def mask_path(self, rid: str) -> Path:
        return self.dir / MASKS / f"{rid}.png"

    def put(self, mark: Mark, record_path: Path, mask_png: bytes | None = None) -> Mark:
        """Store a mark durably: first the painted mask and the kept copy of the record, then the mark line (so a
        mark never names a mask or record that a crash left unwritten)."""
        if mark.label not in LABELS:
            raise MarkError(f"label must be one of {', '.join(LABELS)}")
        if mark.mask is not None and mark.mask not in MASK_SOURCES:
            raise MarkError(f"mask must be one of {', '.join(MASK_SOURCES)} or null")
        if mark.mask == "reviewer" and mask_png is None and not self.mask_path(mark.record).is_file():
            raise MarkError("mask 'reviewer' needs a painted mask")
        if mark.truth == "good" and mark.mask is not None:
            raise MarkError("a good part has no defect mask")
        for sub in ("", MASKS, layout.RECORDS):
            layout.makedirs_durable(self.dir / sub if sub else self.dir)
        if mask_png is not None:
            layout.atomic_write(self.mask_path(mark.record), mask_png, self.dir / MASKS)
        self._keep(mark.record, record_path)
        if not mark.time:
            mark = Mark(**{**mark.__dict__, "time": layout.iso_utc(time.time_ns())})
        layout.append_line(self.path, mark.to_dict(), durable=True)
        return mark

    def clear(self, rid: str, reviewer: str = "") -> None:
        layout.makedirs_durable(self.dir)
        layout.append_line(
            self.path,
            {"record": rid, "label": None, "reviewer": reviewer, "time": layout.iso_utc(time.time_ns())},
            durable=True,
        )

    def _keep(self, rid: str, record_path: Path) -> None:
        kept = self.dir / layout.RECORDS / f"{rid}{layout.RECORD_SUFFIX}"
        if kept.exists() or record_path == kept:
            return
        try:
            os.link(record_path, kept)  # same file system: no extra space until the writer deletes its own
        except OSError:
            tmp = kept.with_name(f".{kept.name}.part")
            shutil.copyfile(record_path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, kept)
        layout.fsync_dir(kept.parent)
