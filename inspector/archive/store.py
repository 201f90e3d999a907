"""The archive directory as the writer uses it: open and lock, put and delete records, snapshots, free space.

Only the daemon's archive writer thread calls this (one writer per directory, enforced with flock). Every
method that writes is crash-safe in the sense of inspector.archive.layout: write to tmp/, fsync, rename.
Errors are OSError (the writer counts and alarms them) or ArchiveUnavailable (the directory cannot be used).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from inspector.archive import layout
from inspector.archive.layout import ARCHIVE_FORMAT


class ArchiveUnavailable(Exception):
    """The archive directory cannot be used (the message says why and names the path)."""


def check_directory(root: Path, line: str, camera: str) -> str | None:
    """What would keep a daemon from using `root` as its archive (None: nothing), without creating anything:
    for check-config, which must not write."""
    if root.exists():
        if not root.is_dir():
            return f"{root} exists and is not a directory"
        if not os.access(root, os.W_OK | os.X_OK):
            return f"{root} is not writable by this user"
        ident = root / layout.ARCHIVE_FILE
        if ident.is_file():
            try:
                data = json.loads(ident.read_text())
            except (OSError, ValueError) as exc:
                return f"{ident}: unreadable: {exc}"
            if data.get("format") != ARCHIVE_FORMAT:
                return f"{ident}: format {data.get('format')!r}, this version writes {ARCHIVE_FORMAT!r}"
            if (data.get("line"), data.get("camera")) != (line, camera):
                return f"{root} is the archive of {data.get('line')}/{data.get('camera')}, not {line}/{camera}"
        return None
    parent = root.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{root} does not exist and cannot be created ({parent} is not writable by this user)"
    return None


class ArchiveStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.tmp = self.root / layout.TMP
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------------------------------ open

    def open(self, line: str, camera: str) -> None:
        """Create or adopt the directory for this line/camera, take the writer's lock, clear tmp/."""
        root = self.root
        try:
            layout.makedirs_durable(root)
            for sub in (layout.RECORDS, layout.MODELS, layout.CONFIGS, layout.TMP):
                (root / sub).mkdir(exist_ok=True)
        except OSError as exc:
            raise ArchiveUnavailable(f"archive {root}: cannot create it: {exc.strerror or exc}") from None
        if not os.access(root, os.W_OK):
            raise ArchiveUnavailable(f"archive {root}: not writable by this user")
        try:
            fd = os.open(root / layout.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ArchiveUnavailable(f"archive {root}: cannot open its lock file: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ArchiveUnavailable(
                f"archive {root}: another daemon writes here (pid {holder}); give each line/camera its own archive.path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        try:
            self._check_identity(line, camera)
            for stray in self.tmp.iterdir():  # records a crash interrupted: never renamed, never seen
                with contextlib.suppress(OSError):
                    stray.unlink() if not stray.is_dir() else shutil.rmtree(stray)
        except BaseException:
            self.close()
            raise

    def _check_identity(self, line: str, camera: str) -> None:
        path = self.root / layout.ARCHIVE_FILE
        if path.exists():
            try:
                ident = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ArchiveUnavailable(f"archive {path}: unreadable: {exc}") from None
            if ident.get("format") != ARCHIVE_FORMAT:
                raise ArchiveUnavailable(
                    f"archive {path}: format {ident.get('format')!r}; this version writes {ARCHIVE_FORMAT!r}"
                )
            if (ident.get("line"), ident.get("camera")) != (line, camera):
                raise ArchiveUnavailable(
                    f"archive {self.root} belongs to {ident.get('line')}/{ident.get('camera')}, not {line}/{camera}: "
                    "give each line/camera its own archive.path"
                )
            return
        ident = {"format": ARCHIVE_FORMAT, "line": line, "camera": camera, "created": layout.iso_utc(time.time_ns())}
        try:
            layout.atomic_write(path, (json.dumps(ident, indent=1) + "\n").encode(), self.tmp)
        except OSError as exc:
            raise ArchiveUnavailable(f"archive {path}: cannot write it: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # --------------------------------------------------------------------------------------- records

    def scan(self) -> list[tuple[str, int]]:
        """(record id, size) of every record, oldest first."""
        found: list[tuple[str, int]] = []
        records = self.root / layout.RECORDS
        for day in sorted(records.iterdir()) if records.is_dir() else ():
            for hour in sorted(day.iterdir()) if day.is_dir() else ():
                if not hour.is_dir():
                    continue
                with os.scandir(hour) as it:
                    for entry in it:
                        if entry.name.endswith(layout.RECORD_SUFFIX) and entry.is_file():
                            rid = entry.name[: -len(layout.RECORD_SUFFIX)]
                            if layout.is_record_id(rid):
                                found.append((rid, entry.stat().st_size))
        found.sort()
        return found

    def put(self, rid: str, data: bytes, summary: dict[str, Any]) -> None:
        """Write one record durably, then its index line (the index is a cache: its failure is not the record's)."""
        path = layout.record_path(self.root, rid)
        layout.makedirs_durable(path.parent)
        layout.atomic_write(path, data, self.tmp)
        with contextlib.suppress(OSError):
            layout.append_line(path.parent / layout.INDEX, summary, durable=False)

    def delete(self, rid: str, *, last_of_hour: bool) -> None:
        """Delete one record (a single unlink: a reader sees it whole or gone). With last_of_hour, also its hour's
        index and empty folders."""
        path = layout.record_path(self.root, rid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if last_of_hour:
            hour = path.parent
            with contextlib.suppress(OSError):
                if not any(p.suffix == layout.RECORD_SUFFIX for p in hour.iterdir()):
                    (hour / layout.INDEX).unlink(missing_ok=True)
                    hour.rmdir()
                    hour.parent.rmdir()  # only when the day is empty too (rmdir refuses otherwise)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    # ------------------------------------------------------------------------------------- snapshots

    def put_snapshot(self, relpath: str, data: bytes) -> None:
        """models/SHA.json, configs/HASH.json, ...: written once (content-addressed), atomically."""
        path = self.root / relpath
        if path.exists():
            return
        layout.atomic_write(path, data, self.tmp)
