"""Prometheus metrics of the archive writer, registered in the daemon's registry (injected, like
prometheus_client's own collectors), with the same `line` and `camera` labels as inspector.metrics.

They exist only while the archive is enabled, so a line without an archive shows no archive series and no
archive alert can fire on it. The series alerts use (drops by cause) exist at zero from the start.
Names are part of the operator interface (docs/OPERATIONS.md, docs/grafana/, docs/prometheus/): add, never rename.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Why a frame chosen for the archive was not archived.
#   pool_full:   every hand-over slot was waiting for the writer (the disk or the writer is too slow)
#   no_space:    the quota or keep_free_mb could not be met even after deleting the oldest records
#   write_error: the file system refused the write (I/O error, read-only, permissions)
#   unavailable: the archive directory could not be opened (missing mount, permissions, held by another daemon)
#   shutdown:    still waiting for the writer when the daemon stopped and the close timeout ran out
#   error:       anything else (a bug: logged with a traceback)
DROP_CAUSES = ("pool_full", "no_space", "write_error", "unavailable", "shutdown", "error")

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ArchiveMetrics:
    def __init__(self, line: str, camera: str, registry: CollectorRegistry | None = None):
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        lc = ("line", "camera")
        self._written = Counter(
            "inspector_archive_records_written", "Frames written to the archive.", lc, registry=r
        ).labels(line, camera)
        self._written_bytes = Counter(
            "inspector_archive_written_bytes", "Bytes of records written to the archive.", lc, registry=r
        ).labels(line, camera)
        dropped = Counter(
            "inspector_archive_dropped",
            "Frames chosen for the archive that could not be archived, by cause (inspection is never affected).",
            (*lc, "cause"),
            registry=r,
        )
        self._dropped = {c: dropped.labels(line, camera, c) for c in DROP_CAUSES}
        self._deleted = Counter(
            "inspector_archive_records_deleted",
            "Records deleted, oldest first, to stay within the quota and the free space to keep.",
            lc,
            registry=r,
        ).labels(line, camera)
        self._bytes = Gauge("inspector_archive_bytes", "Size of the archive's records on disk.", lc, registry=r).labels(
            line, camera
        )
        self._records = Gauge("inspector_archive_records", "Records in the archive.", lc, registry=r).labels(
            line, camera
        )
        self._quota = Gauge(
            "inspector_archive_quota_bytes", "The archive's quota (archive.quota_mb).", lc, registry=r
        ).labels(line, camera)
        self._free = Gauge(
            "inspector_archive_filesystem_free_bytes",
            "Free space on the archive's file system (available to the daemon).",
            lc,
            registry=r,
        ).labels(line, camera)
        self._keep_free = Gauge(
            "inspector_archive_keep_free_bytes", "Free space the archive leaves (archive.keep_free_mb).", lc, registry=r
        ).labels(line, camera)
        self._oldest = Gauge(
            "inspector_archive_oldest_timestamp_seconds",
            "Acquisition time of the oldest record: how far back the evidence goes (0 when empty).",
            lc,
            registry=r,
        ).labels(line, camera)
        self._available = Gauge(
            "inspector_archive_available",
            "1 while the archive directory is open for writing, 0 when not.",
            lc,
            registry=r,
        ).labels(line, camera)
        self._pool_in_use = Gauge(
            "inspector_archive_pool_slots_in_use", "Hand-over slots holding a frame for the writer.", lc, registry=r
        ).labels(line, camera)
        self._pool_slots = Gauge(
            "inspector_archive_pool_slots", "Hand-over slots (archive.pool_slots).", lc, registry=r
        ).labels(line, camera)
        self._write_s = Histogram(
            "inspector_archive_write_seconds",
            "Time to encode and durably write one record (fsync included).",
            lc,
            buckets=WRITE_BUCKETS,
            registry=r,
        ).labels(line, camera)

    # Called from the inference thread (hot path): one counter increment, nothing else.
    def dropped(self, cause: str) -> None:
        self._dropped[cause].inc()

    # Called from the writer thread.
    def written(self, size: int, seconds: float) -> None:
        self._written.inc()
        self._written_bytes.inc(size)
        self._write_s.observe(seconds)

    def deleted(self, n: int = 1) -> None:
        self._deleted.inc(n)

    def usage(self, records: int, size: int, oldest_s: float, free: int) -> None:
        self._records.set(records)
        self._bytes.set(size)
        self._oldest.set(oldest_s)
        self._free.set(free)

    def limits(self, quota: int, keep_free: int) -> None:
        self._quota.set(quota)
        self._keep_free.set(keep_free)

    def available(self, up: bool) -> None:
        self._available.set(1 if up else 0)

    def pool(self, in_use: int, slots: int) -> None:
        self._pool_in_use.set(in_use)
        self._pool_slots.set(slots)
