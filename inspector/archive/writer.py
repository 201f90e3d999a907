"""The archive writer: the hand-over from the inference thread, and the thread that writes records.

Hand-over (inference thread, `ArchiveSink`): before a batch's ring slots are released, each frame is copied
into a free slot of a preallocated pool (`stage`); after the decision, `offer` keeps it (every reject and late
timeout, an evenly spread `pass_fraction` of passes) with its score maps and queues it, or gives the slot back.
The per-frame cost is that bounded copy (a frame; plus the scores when kept). No free slot, or the archive
unusable: a frame to keep is counted as dropped. It never waits, never allocates a buffer, never touches the
disk. (Staging instead of holding the ring slots until the decision: holding them cost the demo ~13 % of its
throughput on 2 cores, a copy costs ~0.1 ms.)

Writer thread: encodes the record (PNG, deflate), gives the slot back, makes room (oldest records first, to stay
within `quota_mb` and leave `keep_free_mb`), writes it crash-safely (inspector.archive.store), and counts.
Drops are alarmed: an `archive` event on the broadcast stream when they start (repeated at most every minute
while they go on, with counts) and when they stop, a log line, and `inspector_archive_dropped_total{cause}`.
The thread runs at a lower CPU priority than inference (nice +10 on Linux).

Memory: pool_slots x (frame + recognizer grid + segmenter output as float32). For the demo (320x320 gray, a
5-class 224x224 segmenter) a slot is ~1.1 MB.
"""

from __future__ import annotations

import calendar
import collections
import contextlib
import copy
import errno
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from inspector.archive import layout
from inspector.archive.metrics import ArchiveMetrics
from inspector.archive.store import ArchiveStore, ArchiveUnavailable
from inspector.config import ArchiveConfig, Config
from inspector.frames import Defect, Reason, Verdict
from inspector.manifest import ModelManifest
from inspector.publish import verdict_message

log = logging.getLogger("inspector.archive")

# What Decider.decide returns: (result, reason, rejecting defects, highest block score).
Decision = tuple[str, Reason, Sequence[Defect], float]

REOPEN_S = 30.0  # an unusable archive directory (missing mount) is tried again this often
ALARM_REPEAT_S = 60.0  # while drops go on, an archive event at most this often
QUIET_S = 60.0  # no drop for this long ends the alarm (an "ok" event)
MONITOR_S = 0.5  # how often drops are looked at (and pool gauges updated)
WRITER_NICE = 10
MB = 1 << 20


class EventSink(Protocol):
    """Where the writer reports its state: the publisher's broadcast stream (inspector.publish.Publisher)."""

    def event(self, kind: str, **fields: Any) -> None: ...


@dataclass(frozen=True, eq=False)
class ArchiveContext:
    """What one runtime decides with, as records name it: built once per Runtime, off the hot path."""

    config: Config
    config_hash: str
    manifests: dict[str, ModelManifest]  # role -> manifest of the model in force
    mode: str  # segmenter_mode
    frame_shape: tuple[int, int, int]  # height, width, channels
    block_grid: tuple[int, int]
    pixel_shape: tuple[int, int, int] | None  # classes, height, width (None: no segmenter)
    ignore_mask: np.ndarray | None = None  # frame-sized bool, when decision.ignore_regions.mask is used

    @property
    def model_hashes(self) -> dict[str, str]:
        return {role: m.sha256 for role, m in self.manifests.items()}

    @property
    def pixel_floor(self) -> float:
        # Never above the threshold in force: the archive must always reproduce the verdict it records.
        return min(self.config.archive.pixel_floor, self.config.decision.pixel_threshold)

    @classmethod
    def build(
        cls,
        config: Config,
        config_hash: str,
        recognizer: ModelManifest,
        segmenter: ModelManifest | None,
        ignore_mask: np.ndarray | None = None,
    ) -> ArchiveContext:
        from inspector.frames import CHANNELS

        src = config.source
        manifests = {"recognizer": recognizer}
        pixel_shape = None
        if segmenter is not None:
            manifests["segmenter"] = segmenter
            pixel_shape = (len(segmenter.classes), segmenter.input.height, segmenter.input.width)
        return cls(
            config=config,
            config_hash=config_hash,
            manifests=manifests,
            mode=config.models.segmenter_mode,
            frame_shape=(src.height, src.width, CHANNELS[src.pixel_format]),
            block_grid=recognizer.grid,
            pixel_shape=pixel_shape,
            ignore_mask=ignore_mask,
        )


@dataclass(slots=True, eq=False)
class _Slot:
    pool: _Pool
    index: int
    frame: np.ndarray
    block: np.ndarray
    pixels: np.ndarray | None
    has_pixels: bool = False
    kept_as: str = ""
    verdict: Verdict | None = None
    decision: Decision | None = None
    ctx: ArchiveContext | None = None


def _touched(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An array whose pages are mapped now: np.zeros maps them lazily, so the hot path's first copy into each
    slot would pay the page faults (milliseconds for a few MB)."""
    a: np.ndarray = np.empty(shape, dtype)
    a.fill(0)
    return a


class _Pool:
    """`n` slots shaped for one runtime's frame and model outputs, allocated once."""

    def __init__(
        self, n: int, frame_shape: tuple[int, ...], block_grid: tuple[int, ...], pixel_shape: tuple[int, ...] | None
    ):
        self.key = (frame_shape, block_grid, pixel_shape)
        self.slots = [
            _Slot(
                self,
                i,
                _touched(frame_shape, np.uint8),
                _touched(block_grid, np.float32),
                None if pixel_shape is None else _touched(pixel_shape, np.float32),
            )
            for i in range(n)
        ]
        # deque.pop/append are atomic: the inference thread takes, the writer thread gives back, no lock.
        self.free: collections.deque[_Slot] = collections.deque(self.slots)

    def release(self, slot: _Slot) -> None:
        slot.verdict = slot.decision = slot.ctx = None
        slot.has_pixels = False
        self.free.append(slot)

    @property
    def in_use(self) -> int:
        return len(self.slots) - len(self.free)


class ArchiveSink:
    """The hot path's side of the archive for one runtime (its pool, its sampling, its context).

    Per batch, from the inference thread: `stage(row, frame)` for each frame before its ring slot is released
    (a copy of the pixels into a free pool slot: the slot can then go back to acquisition before inference,
    as without the archive); after the decision, `offer(row, ...)` keeps the staged copy with the scores, or
    gives the slot back; `discard()` gives back whatever a failed batch staged.
    """

    def __init__(self, writer: ArchiveWriter, pool: _Pool, ctx: ArchiveContext):
        self.writer = writer
        self.pool = pool
        self.ctx = ctx
        self.rejects = ctx.config.archive.rejects
        self.pass_fraction = ctx.config.archive.pass_fraction
        self._acc = 0.0  # evenly spread sampling: keep a pass each time this reaches 1
        self._staged: list[_Slot | None] = [None] * ctx.config.pipeline.batch_size

    def stage(self, row: int, frame: np.ndarray) -> None:
        """Copy batch row `row`'s frame into a free pool slot (none free: the frame cannot be kept, noted)."""
        try:
            slot = self.pool.free.pop()
        except IndexError:
            self._staged[row] = None
            return
        try:
            np.copyto(slot.frame, frame)
        except (ValueError, TypeError):  # a frame that disagrees with the context: a bug, never the line's problem
            self.pool.release(slot)
            self._staged[row] = None
            return
        self._staged[row] = slot

    def discard(self) -> None:
        """The batch failed after staging (an inference error): give every staged slot back."""
        staged = self._staged
        for row, slot in enumerate(staged):
            if slot is not None:
                self.pool.release(slot)
                staged[row] = None

    def offer(
        self,
        row: int,
        verdict: Verdict,
        decision: Decision,
        block_scores: np.ndarray,
        pixel_scores: np.ndarray | None,
    ) -> bool:
        """Keep batch row `row` (staged before) or not. Returns at once: True if queued for writing.

        Call after the verdict is final (its result, reason and hashes set). `decision` is what Decider.decide
        returned (for late timeouts it differs from the verdict).
        """
        slot = self._staged[row]
        self._staged[row] = None
        if verdict.reason is Reason.OK:
            self._acc += self.pass_fraction
            kept = "sample" if self._acc >= 1.0 else ""
            if kept:
                self._acc -= 1.0
        elif self.rejects and verdict.reason in (Reason.DEFECT, Reason.TIMEOUT):
            kept = "reject" if verdict.reason is Reason.DEFECT else "timeout"
        else:
            kept = ""
        writer = self.writer
        if not kept or not writer.available:
            if slot is not None:
                self.pool.release(slot)
            if kept:
                writer.count_hot_drop("unavailable")
            return False
        if slot is None:
            writer.count_hot_drop("pool_full")
            return False
        try:
            np.copyto(slot.block, block_scores)
            if pixel_scores is not None and slot.pixels is not None:
                np.copyto(slot.pixels, pixel_scores)
                slot.has_pixels = True
        except (ValueError, TypeError):
            self.pool.release(slot)
            writer.count_hot_drop("error")
            return False
        # A copy: the pipeline reuses its verdict records (a pool) once the publisher has sent them, which can be
        # before this writer has read one.
        slot.kept_as, slot.verdict, slot.decision, slot.ctx = kept, copy.copy(verdict), decision, self.ctx
        writer.queue.put(slot)
        return True


class ArchiveWriter:
    """One per daemon: the archive directory, the pools, the writer thread, the counting and alarming."""

    def __init__(
        self,
        cfg: ArchiveConfig,
        root: str | Path,
        line: str,
        camera: str,
        run_id: str = "",
        *,
        metrics: ArchiveMetrics | None = None,
        events: EventSink | None = None,
        store: ArchiveStore | None = None,
    ):
        self.cfg = cfg
        self.root = Path(root)
        self.line, self.camera, self.run_id = line, camera, run_id
        self.metrics = metrics if metrics is not None else ArchiveMetrics(line, camera)
        self.events = events
        self.store = store if store is not None else ArchiveStore(self.root)
        self.queue: queue.SimpleQueue[_Slot | None] = queue.SimpleQueue()
        self.available = False
        self.unavailable_reason = ""
        self._pools: dict[tuple[object, ...], _Pool] = {}
        self._sinks: list[ArchiveSink] = []
        self._thread: threading.Thread | None = None
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._report_lock = threading.Lock()
        self._stop_at: float | None = None  # monotonic deadline once close() was called
        self._next_open = 0.0
        # Writer-thread state: what is on disk, oldest first.
        self._records: collections.deque[tuple[str, int]] = collections.deque()
        self._bytes = 0
        self._snapshots: set[str] = set()
        # Drop counts: the inference thread writes _hot_drops, the writer thread _writer_drops (no shared writes).
        self._hot_drops: dict[str, int] = collections.defaultdict(int)
        self._writer_drops: dict[str, int] = collections.defaultdict(int)
        self._last_drop_text = ""
        self._reported = 0
        self._alarm_since: float | None = None
        self._last_alarm = 0.0
        self._last_drop_seen = 0.0
        self.written = 0
        self.deleted = 0
        self.metrics.limits(cfg.quota_mb * MB, cfg.keep_free_mb * MB)

    # ------------------------------------------------------------------------------ main thread side

    def start(self) -> None:
        """Open the directory (an unusable one is reported, alarmed and retried: inspection starts anyway)."""
        self._try_open()
        self._thread = threading.Thread(target=self._run, name="archive-writer", daemon=True)
        self._thread.start()
        # Alarms come from their own thread: a writer stuck in a write() to a dead disk cannot raise them itself.
        self._monitor = threading.Thread(target=self._watch, name="archive-monitor", daemon=True)
        self._monitor.start()

    def bind(self, ctx: ArchiveContext) -> ArchiveSink:
        """The sink a runtime's inference uses (called while building the runtime, off the hot path).

        A pool is reused when the frame and model output shapes are unchanged (a threshold reload); a model with
        other outputs gets a new one. Pools of earlier runtimes are let go: slots still queued keep theirs alive.
        """
        key = (ctx.frame_shape, ctx.block_grid, ctx.pixel_shape)
        pool = self._pools.get(key)
        if pool is None or len(pool.slots) != self.cfg.pool_slots:
            pool = _Pool(self.cfg.pool_slots, *key)
        self._pools = {key: pool}
        sink = ArchiveSink(self, pool, ctx)
        return sink

    def configure(self, cfg: ArchiveConfig) -> None:
        """A reload: quota and free space take effect with the next record; sampling with the next runtime."""
        self.cfg = cfg
        self.metrics.limits(cfg.quota_mb * MB, cfg.keep_free_mb * MB)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to timeout_s; the rest is counted as dropped, cause shutdown), then stop."""
        if self._thread is None:
            self.store.close()
            return
        self._stop_at = time.monotonic() + timeout_s
        self.queue.put(None)
        self._thread.join(timeout_s + 5.0)
        if self._thread.is_alive():
            log.error("archive writer did not stop within %.1f s", timeout_s + 5.0)
        self._thread = None
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(5.0)
        self._report(final=True)

    def count_hot_drop(self, cause: str) -> None:
        """Inference thread: a frame chosen for the archive that could not be handed over."""
        self._hot_drops[cause] += 1
        self.metrics.dropped(cause)

    @property
    def dropped(self) -> dict[str, int]:
        out = collections.Counter(self._hot_drops)
        out.update(self._writer_drops)
        return dict(out)

    @property
    def bytes_on_disk(self) -> int:
        return self._bytes

    @property
    def records_on_disk(self) -> int:
        return len(self._records)

    # ---------------------------------------------------------------------------------- writer thread

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed: run at normal priority
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICE)
        try:
            while True:
                item: _Slot | bool | None
                try:
                    item = self.queue.get(timeout=0.25)
                except queue.Empty:
                    item = False
                if item is None:  # close(): everything queued before it has been handled (FIFO)
                    break
                if not self.available and time.monotonic() >= self._next_open and self._stop_at is None:
                    self._try_open()
                if isinstance(item, _Slot):
                    self._handle(item)
        finally:
            self.store.close()
            self.available = False

    def _try_open(self) -> None:
        try:
            self.store.open(self.line, self.camera)
            scanned = self.store.scan()
        except (ArchiveUnavailable, OSError) as exc:
            self.available = False
            self.metrics.available(False)
            text = str(exc) if isinstance(exc, ArchiveUnavailable) else f"archive {self.root}: {exc}"
            if text != self.unavailable_reason:  # log and announce each new reason once, not every retry
                log.error("%s; frames to archive are dropped and counted, retrying every %.0f s", text, REOPEN_S)
                if self.events is not None:
                    self.events.event("archive", state="unavailable", detail=text)
            self.unavailable_reason = text
            self._next_open = time.monotonic() + REOPEN_S
            return
        self._records = collections.deque(scanned)
        self._bytes = sum(size for _, size in scanned)
        if self.unavailable_reason:
            log.info("archive %s is usable again", self.root)
            if self.events is not None:
                self.events.event("archive", state="available", detail=str(self.root))
        self.unavailable_reason = ""
        self.available = True
        self.metrics.available(True)
        self._update_usage()
        log.info(
            "archive %s: %d records, %.1f MiB (quota %d MiB)",
            self.root,
            len(self._records),
            self._bytes / MB,
            self.cfg.quota_mb,
        )

    def _drop(self, cause: str, text: str = "") -> None:
        self._writer_drops[cause] += 1
        self.metrics.dropped(cause)
        if text:
            self._last_drop_text = text

    def _handle(self, slot: _Slot) -> None:
        if self._stop_at is not None and time.monotonic() > self._stop_at:
            slot.pool.release(slot)
            self._drop("shutdown", "the daemon stopped before the writer caught up")
            return
        if not self.available:
            slot.pool.release(slot)
            self._drop("unavailable", self.unavailable_reason)
            return
        t0 = time.perf_counter()
        try:
            ctx = slot.ctx
            assert ctx is not None and slot.verdict is not None and slot.decision is not None
            rid = layout.record_id(slot.verdict.t_acquired_ns, self.run_id, slot.verdict.seq)
            pixels = slot.pixels if slot.has_pixels else None
            if pixels is not None:
                layout.apply_pixel_floor(pixels, ctx.pixel_floor)
            meta = self._meta(rid, slot, ctx)
            data = layout.encode_record(
                meta, layout.encode_image(slot.frame, ctx.config.source.pixel_format), slot.block, pixels
            )
            summary = layout.summary_of(meta, len(data))
        except Exception as exc:
            log.exception("archive: cannot encode a record")
            self._drop("error", f"cannot encode a record: {exc}")
            return
        finally:
            slot.pool.release(slot)  # the pixels are encoded: the slot can take the next frame
        try:
            self._snapshot(ctx)
        except OSError as exc:
            self._drop(_cause(exc), f"cannot write the config/model snapshot: {exc.strerror or exc}")
            return
        if not self._make_room(len(data)):
            return
        try:
            self.store.put(rid, data, summary)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) and self._records:
                # The file system filled up behind our back (other writers): make room and try once more.
                self._delete_oldest(max(2 * len(data), 1))
                try:
                    self.store.put(rid, data, summary)
                except OSError as exc2:
                    self._drop(_cause(exc2), f"cannot write {rid}: {exc2.strerror or exc2}")
                    return
            else:
                self._drop(_cause(exc), f"cannot write {rid}: {exc.strerror or exc}")
                return
        self._records.append((rid, len(data)))
        self._bytes += len(data)
        self.written += 1
        self.metrics.written(len(data), time.perf_counter() - t0)
        self._update_usage()

    def _meta(self, rid: str, slot: _Slot, ctx: ArchiveContext) -> dict[str, Any]:
        v = slot.verdict
        assert v is not None and slot.decision is not None
        result, reason, defects, score = slot.decision
        h, w, c = slot.frame.shape
        return {
            "format": layout.RECORD_FORMAT,
            "id": rid,
            "kept_as": slot.kept_as,
            "verdict": verdict_message(v, self.line, self.camera, self.run_id),
            # Unrounded, as Decider.decide returned it: `tune` compares its re-decision with this, exactly.
            "decision": {
                "result": result,
                "reason": reason.value if isinstance(reason, Reason) else str(reason),
                "defects": [
                    {"class": d.cls, "area_px": d.area_px, "bbox": list(d.bbox), "score": float(d.score)}
                    for d in defects
                ],
                "recognizer_score": float(score),
            },
            "segmenter_ran": slot.has_pixels,
            "segmenter_mode": ctx.mode,
            "decision_config": ctx.config.decision.model_dump(mode="json"),
            "config_hash": ctx.config_hash,
            "model_hashes": ctx.model_hashes,
            "frame": {"height": h, "width": w, "channels": c, "pixel_format": ctx.config.source.pixel_format},
            "pixel_floor": ctx.pixel_floor if slot.has_pixels else None,
            "written": layout.iso_utc(time.time_ns()),
        }

    def _snapshot(self, ctx: ArchiveContext) -> None:
        """The config and manifests a record names, written before the record (once each)."""
        key = f"{ctx.config_hash}:{','.join(sorted(ctx.model_hashes.values()))}"
        if key in self._snapshots:
            return
        for manifest in ctx.manifests.values():
            data = json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=1).encode()
            self.store.put_snapshot(f"{layout.MODELS}/{manifest.sha256}.json", data)
        mask_name = None
        if ctx.ignore_mask is not None:
            mask_name = f"{ctx.config_hash}.ignore.png"
            ok, png = cv2.imencode(".png", ctx.ignore_mask.astype(np.uint8) * 255)
            if ok:
                self.store.put_snapshot(f"{layout.CONFIGS}/{mask_name}", png.tobytes())
        snap = {"config_hash": ctx.config_hash, "config": ctx.config.model_dump(mode="json"), "ignore_mask": mask_name}
        self.store.put_snapshot(f"{layout.CONFIGS}/{ctx.config_hash}.json", json.dumps(snap, indent=1).encode())
        self._snapshots.add(key)

    def _make_room(self, size: int) -> bool:
        quota, keep_free = self.cfg.quota_mb * MB, self.cfg.keep_free_mb * MB
        if size > quota:
            self._drop("no_space", f"a record of {size} bytes is larger than the quota of {self.cfg.quota_mb} MiB")
            return False
        while self._records and self._bytes + size > quota:
            self._delete_oldest(0)
        try:
            free = self.store.free_bytes()
        except OSError:
            free = keep_free + size  # cannot tell: let the write itself find out
        while self._records and free - size < keep_free:
            freed = self._delete_oldest(0)
            free += freed
        if free - size < keep_free:
            self._drop(
                "no_space",
                f"{free // MB} MiB free on the archive's file system, {self.cfg.keep_free_mb} MiB must stay free "
                "and there is nothing left to delete",
            )
            return False
        return True

    def _delete_oldest(self, at_least: int) -> int:
        """Delete the oldest record (at least one; more until `at_least` bytes are freed). Returns bytes freed."""
        freed = 0
        while self._records:
            rid, size = self._records.popleft()
            nxt = self._records[0][0] if self._records else ""
            try:
                self.store.delete(rid, last_of_hour=layout.hour_dir(nxt) != layout.hour_dir(rid) if nxt else True)
            except OSError as exc:
                log.warning("archive: cannot delete %s: %s", rid, exc)
            self._bytes -= size
            freed += size
            self.deleted += 1
            self.metrics.deleted()
            if freed >= at_least:
                break
        self._update_usage()
        return freed

    def _update_usage(self) -> None:
        oldest = 0.0
        if self._records:
            rid = self._records[0][0]
            with contextlib.suppress(ValueError):
                oldest = calendar.timegm(time.strptime(rid[:15], "%Y%m%dT%H%M%S"))
        try:
            free = self.store.free_bytes()
        except OSError:
            free = 0
        self.metrics.usage(len(self._records), self._bytes, oldest, free)

    def _watch(self) -> None:
        while not self._monitor_stop.wait(MONITOR_S):
            self._report()

    def _report(self, final: bool = False) -> None:
        """Alarm on drops (events, log) without flooding: at the start, every minute while on, at the end."""
        with self._report_lock:
            self._report_locked(final)

    def _report_locked(self, final: bool) -> None:
        for pool in list(self._pools.values()):
            self.metrics.pool(pool.in_use, len(pool.slots))
        drops = self.dropped
        total = sum(drops.values())
        now = time.monotonic()
        if total > self._reported:
            self._last_drop_seen = now
            if self._alarm_since is None or now - self._last_alarm >= ALARM_REPEAT_S or final:
                new = total - self._reported
                text = self._last_drop_text or (
                    "the writer is behind: every hand-over slot was waiting"
                    if drops.get("pool_full")
                    else self.unavailable_reason
                )
                log.warning(
                    "archive: %d frame(s) could not be archived (%s); inspection is not affected: %s",
                    new,
                    ", ".join(f"{k} {v}" for k, v in sorted(drops.items()) if v),
                    text,
                )
                if self.events is not None:
                    self.events.event("archive", state="dropping", dropped=new, dropped_total=drops, detail=text)
                self._alarm_since = self._alarm_since or now
                self._last_alarm = now
                self._reported = total
        elif self._alarm_since is not None and now - self._last_drop_seen >= QUIET_S:
            log.info("archive: writing again, nothing dropped for %.0f s", QUIET_S)
            if self.events is not None:
                self.events.event("archive", state="ok", dropped_total=drops)
            self._alarm_since = None


def _cause(exc: OSError) -> str:
    return "no_space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "write_error"
