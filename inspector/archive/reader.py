"""Reading an archive (docs/ARCHIVE.md) while a daemon may be writing to it and deleting from it.

Listing uses each hour's index.jsonl and opens a record only when its index line is missing (a crash between
the rename and the index append, or an index written by nothing). A record deleted by the quota between listing
and opening is simply gone (`RecordGone`). Records that a reviewer marked are also kept under review/records/
(hard links), so they stay readable after the writer deleted them from records/.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspector.archive import layout
from inspector.archive.layout import ArchiveFormatError, Record, Summary
from inspector.manifest import ModelManifest

log = logging.getLogger("inspector.archive")

RECENT_S = 2.0  # a folder modified this recently is listed again (mtime granularity can hide a new file)


class RecordGone(KeyError):
    """The record is not (or no longer) in the archive: never written, or deleted by the quota."""


@dataclass
class _Hour:
    mtime_ns: int = 0
    index_size: int = -1
    entries: dict[str, Summary] = field(default_factory=dict)


class ArchiveReader:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / layout.ARCHIVE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.root}: not an inspector archive (no {layout.ARCHIVE_FILE})")
        try:
            self.identity: dict[str, Any] = json.loads(path.read_text())
        except ValueError as exc:
            raise ArchiveFormatError(f"{path}: {exc}") from None
        if self.identity.get("format") != layout.ARCHIVE_FORMAT:
            raise ArchiveFormatError(
                f"{path}: format {self.identity.get('format')!r}, this version reads {layout.ARCHIVE_FORMAT!r}"
            )
        self._hours: dict[str, _Hour] = {}
        self._manifests: dict[str, ModelManifest] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._masks: dict[str, np.ndarray | None] = {}
        self.unreadable: set[str] = set()

    @property
    def kept_dir(self) -> Path:
        return self.root / layout.REVIEW / layout.RECORDS

    # ----------------------------------------------------------------------------------------- listing

    def summaries(self) -> list[Summary]:
        """Every record, newest first (re-reads only the hours that changed since the last call)."""
        records = self.root / layout.RECORDS
        seen: set[str] = set()
        out: dict[str, Summary] = {}
        now_ns = time.time_ns()
        for day in _subdirs(records):
            for hour in _subdirs(day):
                rel = f"{day.name}/{hour.name}"
                seen.add(rel)
                try:
                    mtime = hour.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
                cached = self._hours.get(rel)
                if cached is None or cached.mtime_ns != mtime or now_ns - mtime < RECENT_S * 1e9:
                    cached = self._refresh_hour(hour, cached or _Hour())
                    cached.mtime_ns = mtime
                    self._hours[rel] = cached
                out.update(cached.entries)
        for gone in set(self._hours) - seen:
            del self._hours[gone]
        for path in _files(self.kept_dir, layout.RECORD_SUFFIX):
            rid = path.name[: -len(layout.RECORD_SUFFIX)]
            if rid not in out and layout.is_record_id(rid):
                summary = self._summarise(path)
                if summary is not None:
                    out[rid] = summary
        return sorted(out.values(), key=lambda s: (s.t, s.id), reverse=True)

    def _refresh_hour(self, hour: Path, cached: _Hour) -> _Hour:
        ids = {p.name[: -len(layout.RECORD_SUFFIX)] for p in _files(hour, layout.RECORD_SUFFIX)}
        entries = {rid: s for rid, s in cached.entries.items() if rid in ids}
        new = ids - set(entries)
        if new:
            index = hour / layout.INDEX
            try:
                size = index.stat().st_size
            except FileNotFoundError:
                size = -1
            if size != cached.index_size:
                for line in layout.read_lines(index):
                    rid = line.get("id")
                    if rid in new:
                        try:
                            entries[rid] = Summary.from_dict(line)
                        except (KeyError, TypeError, ValueError):
                            continue
                cached.index_size = size
            for rid in new - set(entries):
                summary = self._summarise(hour / f"{rid}{layout.RECORD_SUFFIX}")
                if summary is not None:
                    entries[rid] = summary
        cached.entries = entries
        return cached

    def _summarise(self, path: Path) -> Summary | None:
        try:
            return Record(path).summary()
        except FileNotFoundError:
            return None
        except ArchiveFormatError as exc:
            if path.name not in self.unreadable:
                log.warning("%s", exc)
                self.unreadable.add(path.name)
            return None

    # ----------------------------------------------------------------------------------------- records

    def path_of(self, rid: str) -> Path:
        if not layout.is_record_id(rid):
            raise RecordGone(rid)
        for path in (layout.record_path(self.root, rid), self.kept_dir / f"{rid}{layout.RECORD_SUFFIX}"):
            if path.is_file():
                return path
        raise RecordGone(rid)

    def open(self, rid: str) -> Record:
        path = self.path_of(rid)
        try:
            return Record(path)
        except FileNotFoundError:  # deleted between the check and the read
            raise RecordGone(rid) from None

    def records(self, ids: list[str] | None = None) -> Iterator[Record]:
        """Open each record (all, oldest first, when `ids` is None); ones deleted meanwhile are skipped."""
        if ids is None:
            ids = [s.id for s in reversed(self.summaries())]
        for rid in ids:
            try:
                yield self.open(rid)
            except RecordGone:
                continue

    # ------------------------------------------------------------------------------------- snapshots

    def manifest(self, sha256: str) -> ModelManifest:
        m = self._manifests.get(sha256)
        if m is None:
            path = self.root / layout.MODELS / f"{sha256}.json"
            try:
                m = ModelManifest.model_validate_json(path.read_text())
            except FileNotFoundError:
                raise ArchiveFormatError(
                    f"{path}: missing (a record names a model the archive has no manifest of)"
                ) from None
            except ValueError as exc:
                raise ArchiveFormatError(f"{path}: invalid manifest: {exc}") from None
            self._manifests[sha256] = m
        return m

    def config_snapshot(self, config_hash: str) -> dict[str, Any]:
        """{"config_hash", "config" (the whole line config, as JSON), "ignore_mask" (file name or None)}."""
        snap = self._configs.get(config_hash)
        if snap is None:
            path = self.root / layout.CONFIGS / f"{config_hash}.json"
            try:
                snap = json.loads(path.read_text())
            except FileNotFoundError:
                raise ArchiveFormatError(
                    f"{path}: missing (a record names a config the archive has no copy of)"
                ) from None
            except ValueError as exc:
                raise ArchiveFormatError(f"{path}: {exc}") from None
            self._configs[config_hash] = snap
        return snap

    def ignore_mask(self, config_hash: str) -> np.ndarray | None:
        """The frame-sized ignore mask (bool) that config used, or None."""
        if config_hash not in self._masks:
            name = self.config_snapshot(config_hash).get("ignore_mask")
            mask = None
            if name:
                image = cv2.imread(str(self.root / layout.CONFIGS / name), cv2.IMREAD_GRAYSCALE)
                if image is None:
                    raise ArchiveFormatError(f"{self.root / layout.CONFIGS / name}: unreadable ignore mask")
                mask = image > 0
            self._masks[config_hash] = mask
        return self._masks[config_hash]


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files(path: Path, suffix: str) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return [Path(e.path) for e in it if e.name.endswith(suffix) and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
