"""Prometheus metrics of one daemon instance (one line/camera), and the HTTP exporter that serves them.

Every metric is prefixed `inspector_` and carries `line` and `camera` labels, so one Prometheus scrapes many
instances (one per camera) and dashboards aggregate per line. The series an operator alerts on (verdicts by
result/reason, drops by cause, reloads by result) are created at zero when the instance starts: a counter that
only appears at its first increment makes `rate()` and `increase()` blind to the first event, and alert rules on
an absent series never fire.

Hot-path methods look up pre-bound label children in plain dicts instead of calling `.labels()` per frame
(which takes a lock and builds a tuple); prometheus_client's own counters and histograms are thread-safe.

Metric names are part of the operator interface (docs/OPERATIONS.md, docs/grafana/, docs/prometheus/): add,
never rename.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from inspector.frames import Reason, Verdict

# Acquisition-to-publish latency of a part: a few ms on a GPU, tens of ms on an embedded CPU, the deadline
# (1 s by default) when the pipeline is overloaded. Dense around 1-100 ms so that p50/p99 estimated from the
# histogram are within a bucket's width of the truth where lines actually operate.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.010,
    0.015,
    0.020,
    0.030,
    0.050,
    0.075,
    0.100,
    0.150,
    0.200,
    0.300,
    0.500,
    0.750,
    1.0,
    2.0,
    5.0,
)

# One stage takes from tens of microseconds (decision, publish) to tens of milliseconds (inference on the CPU).
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.010,
    0.015,
    0.025,
    0.050,
    0.075,
    0.100,
    0.250,
    0.500,
    1.0,
    2.5,
)

STAGES = ("acquire", "preprocess", "recognizer", "segmenter", "decision", "publish")
# Why a frame was not inspected (each still left the pipeline as a fail-safe verdict).
DROP_CAUSES = tuple(r.value for r in Reason if not r.inspected)
# Why a verdict did not reach the broadcast socket (see publish.Publisher).
VERDICT_DROP_CAUSES = ("queue_full", "closed")
# Why a published verdict did not go to the actuator: nobody connected, its queue full, too old to act on.
ACTUATOR_UNDELIVERED_CAUSES = ("no_receiver", "queue_full", "stale")
# Why an actuator receiver was refused at its handshake: a second one, or (CURVE) a key not authorised.
ACTUATOR_REFUSED_CAUSES = ("second_receiver", "unauthorised")
RELOAD_RESULTS = ("ok", "invalid", "failed")


_M = TypeVar("_M", Counter, Histogram)  # a labelled metric; .labels() gives a child of the same type


class Metrics:
    """The metrics of one line/camera. Own registry by default, so tests and several instances never collide."""

    def __init__(self, line: str, camera: str, registry: CollectorRegistry | None = None):
        self.line = line
        self.camera = camera
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        lc = ("line", "camera")
        r = self.registry

        self._acquired = Counter(
            "inspector_frames_acquired",
            "Frames acquired from the source (each gets exactly one verdict).",
            lc,
            registry=r,
        ).labels(line, camera)
        self._verdicts_c = Counter(
            "inspector_verdicts",
            "Verdicts published on the broadcast stream, by result (pass/reject) and reason.",
            (*lc, "result", "reason"),
            registry=r,
        )
        self._defects_c = Counter(
            "inspector_defects", "Defect blobs reported in published verdicts, by class.", (*lc, "class"), registry=r
        )
        self._verdicts_dropped_c = Counter(
            "inspector_verdicts_dropped",
            "Verdicts that never reached the broadcast socket, by cause. "
            "frames_acquired = verdicts + verdicts_dropped.",
            (*lc, "cause"),
            registry=r,
        )
        self._frames_dropped_c = Counter(
            "inspector_frames_dropped",
            "Frames not inspected, by cause; each still got a fail-safe verdict (reason = cause).",
            (*lc, "cause"),
            registry=r,
        )
        self._camera_drops = Counter(
            "inspector_camera_dropped_frames",
            "Frames the camera lost before they reached the daemon (gaps in the camera's frame id).",
            lc,
            registry=r,
        ).labels(line, camera)
        self._stage_h = Histogram(
            "inspector_stage_seconds",
            "Time spent in one pipeline stage, per frame or per batch (inference stages).",
            (*lc, "stage"),
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._latency = Histogram(
            "inspector_latency_seconds",
            "Time from frame acquisition to its verdict being published.",
            lc,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(line, camera)
        self._ring_in_use = Gauge(
            "inspector_ring_slots_in_use", "Frame ring slots holding a frame not yet decided.", lc, registry=r
        ).labels(line, camera)
        self._ring_slots = Gauge("inspector_ring_slots", "Frame ring size (slots).", lc, registry=r).labels(
            line, camera
        )
        self._reloads_c = Counter(
            "inspector_reloads", "Config reloads (SIGHUP / systemctl reload), by result.", (*lc, "result"), registry=r
        )
        self._last_reload = Gauge(
            "inspector_last_reload_timestamp_seconds",
            "Unix time of the last config reload attempt, by result.",
            (*lc, "result"),
            registry=r,
        )
        self._engine_info = Info(
            "inspector_engine", "The model loaded for each role (backend, model hash, ...).", (*lc, "role"), registry=r
        )
        self._config_info = Info("inspector_config", "The config in force.", lc, registry=r).labels(line, camera)
        # The two connection gauges appear at their first report, not at zero: a source without a connection
        # (synthetic, folder) or a disabled actuator channel must not look disconnected to an alert rule.
        self._camera_connected_g = Gauge(
            "inspector_camera_connected", "1 while the camera delivers frames, 0 while it is lost.", lc, registry=r
        )
        self._actuator_connected_g = Gauge(
            "inspector_actuator_connected",
            "Receivers (reject actuator / PLC gateway) connected to the actuator channel; 0 = nobody listening.",
            lc,
            registry=r,
        )
        self._actuator_undelivered_c = Counter(
            "inspector_actuator_undelivered",
            "Verdicts published but not handed to an actuator receiver, by cause: no_receiver, queue_full, stale "
            "(older than publish.actuator_max_age_ms).",
            (*lc, "cause"),
            registry=r,
        )
        self._actuator_undelivered = {
            cause: self._actuator_undelivered_c.labels(line, camera, cause) for cause in ACTUATOR_UNDELIVERED_CAUSES
        }
        self._actuator_refused_c = Counter(
            "inspector_actuator_refused",
            "Connections refused on the actuator channel at their handshake: second_receiver, unauthorised (CURVE).",
            (*lc, "cause"),
            registry=r,
        )
        self._actuator_refused = {
            cause: self._actuator_refused_c.labels(line, camera, cause) for cause in ACTUATOR_REFUSED_CAUSES
        }
        self._encode_failed = Counter(
            "inspector_verdicts_encode_failed",
            "Verdicts that could not be encoded: the minimal fail-safe verdict (reason error) went out instead.",
            lc,
            registry=r,
        ).labels(line, camera)
        # Set at start-up and on a reload that changes the models (inspector/capacity.py); the source rate only
        # where the config states one (a simulator's rate_hz, a camera's AcquisitionFrameRate).
        self._capacity = Gauge(
            "inspector_capacity_fps",
            "Frames per second the pipeline can inspect with the loaded models and batch size (measured at warm-up).",
            lc,
            registry=r,
        )
        self._source_rate = Gauge(
            "inspector_source_rate_fps",
            "Frames per second the source is configured to deliver (absent when not known: triggered, paced).",
            lc,
            registry=r,
        )
        self._engine_healthy = Gauge(
            "inspector_engine_healthy",
            "1 while the models' outputs are sane; 0 once too many frames had bad outputs or failed inference "
            "(health.max_faulty_frames within health.window_s): every frame is rejected until systemd restarts it.",
            lc,
            registry=r,
        ).labels(line, camera)
        self._engine_healthy.set(1)
        self._started = Gauge(
            "inspector_start_timestamp_seconds", "Unix time the daemon instance started.", lc, registry=r
        ).labels(line, camera)
        self._started.set_to_current_time()

        self._verdicts = {}
        for reason in Reason:
            for result in ("pass", "reject"):
                # An inspected part's result follows from its reason; fail-safe reasons may go either way.
                if (reason is Reason.OK and result == "reject") or (reason is Reason.DEFECT and result == "pass"):
                    continue
                self._verdicts[(result, reason.value)] = self._verdicts_c.labels(line, camera, result, reason.value)
        self._defects: dict[str, Counter] = {}
        self._verdicts_dropped = self._children(self._verdicts_dropped_c, VERDICT_DROP_CAUSES)
        self._frames_dropped = self._children(self._frames_dropped_c, DROP_CAUSES)
        self._stages = self._children(self._stage_h, STAGES)
        self._reloads = self._children(self._reloads_c, RELOAD_RESULTS)
        self._lock = threading.Lock()  # only guards creating new label children on first use

    def _children(self, metric: _M, values: Iterable[str]) -> dict[str, _M]:
        return {v: metric.labels(self.line, self.camera, v) for v in values}

    def _child(self, cache: dict[str, _M], metric: _M, key: str) -> _M:
        child = cache.get(key)
        if child is None:
            with self._lock:
                child = cache.get(key)
                if child is None:
                    child = metric.labels(self.line, self.camera, key)
                    cache[key] = child
        return child

    # ---------------------------------------------------------------------------------------- counters

    def acquired(self) -> None:
        """One frame acquired (called once per frame, including those refused for overload)."""
        self._acquired.inc()

    def verdict_published(self, v: Verdict, latency_s: float) -> None:
        """One verdict handed to the broadcast socket `latency_s` after its frame was acquired."""
        reason = v.reason.value
        child = self._verdicts.get((v.result, reason))
        if child is None:
            with self._lock:
                child = self._verdicts.get((v.result, reason))
                if child is None:
                    child = self._verdicts_c.labels(self.line, self.camera, v.result, reason)
                    self._verdicts[(v.result, reason)] = child
        child.inc()
        for d in v.defects:
            self._child(self._defects, self._defects_c, d.cls).inc()
        self._latency.observe(latency_s)

    def verdict_dropped(self, cause: str) -> None:
        """A verdict that never reached the broadcast socket (queue_full, closed)."""
        self._child(self._verdicts_dropped, self._verdicts_dropped_c, cause).inc()

    def drop(self, cause: str) -> None:
        """A frame not inspected: overload, timeout, error, bad_frame, shutdown, bad_output."""
        self._child(self._frames_dropped, self._frames_dropped_c, cause).inc()

    def camera_drops(self, n: int) -> None:
        if n > 0:
            self._camera_drops.inc(n)

    def stage(self, name: str, seconds: float) -> None:
        self._child(self._stages, self._stage_h, name).observe(seconds)

    def reload(self, result: str) -> None:
        """A reload attempt: ok, invalid (the new config was refused), failed (valid, but could not be applied)."""
        self._child(self._reloads, self._reloads_c, result).inc()
        self._last_reload.labels(self.line, self.camera, result).set_to_current_time()

    def actuator_undelivered(self, cause: str = "no_receiver") -> None:
        self._actuator_undelivered[cause].inc()

    def actuator_refused(self, cause: str) -> None:
        self._actuator_refused[cause].inc()

    def verdict_encode_failed(self) -> None:
        self._encode_failed.inc()

    # ------------------------------------------------------------------------------------------ gauges

    def ring_occupancy(self, in_use: int, slots: int) -> None:
        self._ring_in_use.set(in_use)
        self._ring_slots.set(slots)

    def engine_healthy(self, healthy: bool) -> None:
        self._engine_healthy.set(1 if healthy else 0)

    def engine_info(self, role: str, **labels: object) -> None:
        """Describe the model loaded for `role` (recognizer, segmenter): backend, path, hash, precision..."""
        self._engine_info.labels(self.line, self.camera, role).info({k: str(v) for k, v in labels.items()})

    def config_info(self, config_hash: str, **labels: object) -> None:
        """The config in force (its hash is also in every verdict), so a dashboard shows when it changed."""
        self._config_info.info({"config_hash": config_hash, **{k: str(v) for k, v in labels.items()}})

    def capacity(self, fps: float, source_rate: float | None) -> None:
        """The measured capacity and the configured source rate (None: not known, the series is removed)."""
        self._capacity.labels(self.line, self.camera).set(fps)
        if source_rate is None:
            with contextlib.suppress(KeyError):  # never set
                self._source_rate.remove(self.line, self.camera)
        else:
            self._source_rate.labels(self.line, self.camera).set(source_rate)

    def camera_connected(self, connected: bool) -> None:
        self._camera_connected_g.labels(self.line, self.camera).set(1 if connected else 0)

    def actuator_connected(self, connected: bool | int) -> None:
        """True/False, or the number of receivers connected (the publisher passes the count)."""
        self._actuator_connected_g.labels(self.line, self.camera).set(int(connected))

    # ----------------------------------------------------------------------------------------- exporter

    def serve(self, bind: str, port: int) -> int:
        """Start the HTTP exporter (a daemon thread) on bind:port; port 0 = any free port. Returns the port."""
        if self._server is not None:
            raise RuntimeError("metrics exporter already serving")
        try:
            server, thread = start_http_server(port, addr=bind, registry=self.registry)
        except OSError as exc:
            raise RuntimeError(f"metrics exporter cannot listen on {bind}:{port}: {exc.strerror or exc}") from exc
        self._server, self._server_thread = server, thread
        return server.server_port

    def close(self) -> None:
        """Stop the HTTP exporter (if serving) and free its port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._server_thread is not None:
                self._server_thread.join(timeout=5)
            self._server = None
            self._server_thread = None
