"""The daemon: wires config, models, source, pipeline, publisher, metrics, systemd and signals together.

Start-up (in this order; each failure is a one-paragraph message and an exit status, never a traceback):
  config (exit 2) -> publisher bound (exit 4; first, so subscribers connect while the models load) ->
  models loaded and warmed up (exit 3; 2 when the config disagrees with them) -> source opened (exit 4) ->
  metrics exporter (exit 4) -> `start` event -> READY=1 -> first frame. READY therefore means: models loaded,
  warm-up inference done, sockets bound, source open.

Signals (handled on the main thread, which does nothing on the hot path):
- SIGHUP: reload. The YAML is re-read and validated; a valid file becomes a new `Runtime` (models reused when
  unchanged, new ones loaded and warmed up beside the running ones) swapped in between two batches. An invalid
  file, or one that changes a restart-only setting (runtime.RESTART_ONLY: line, source, publish, metrics, ring), is
  refused as a whole, logged with file/line or the settings named, counted as reload result "invalid", and the
  running config stays. A valid file whose models cannot be loaded, or any other failure (an exception of any
  type), is counted "failed" and the running config stays too. Each reload is logged once and published as a
  `reload` event with its result and, when refused, why. SIGHUPs during a reload are coalesced into one more
  reload after it. RELOADING=1 ... READY=1.
- SIGTERM / SIGINT: STOPPING=1, stop acquiring, inspect the frames in flight (or, past the drain budget,
  reject them with reason shutdown), publish every verdict, close the publisher (it drains), exit 0.

Events on the broadcast stream: start, stop, reload (result ok/invalid/failed), camera (connected or lost), alarm
(engine_unhealthy: too many frames with bad network outputs or failed inference, inspector.health), capacity (the
source is configured faster than the pipeline can inspect: at start, or a reload changing models).

The systemd watchdog is pinged only while verdicts are being made (service.Watchdog on the decided counter):
a hung camera, model or pipeline stops the pings, and so does an unhealthy engine (inspector.health), for good.
On a hardware-triggered line WatchdogSec must therefore be longer than the longest legitimate gap between two
parts, or systemd restarts an idle but healthy daemon.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from inspector.archive.metrics import ArchiveMetrics
from inspector.archive.writer import ArchiveWriter
from inspector.capacity import configured_rate
from inspector.config import Config, ConfigError, load_config, resolve_path
from inspector.console import Console, LiveStats, MetricsTap
from inspector.curve import CurveKeyError, ServerKeys
from inspector.health import Alarm
from inspector.metrics import Metrics
from inspector.pipeline import Pipeline
from inspector.preprocess import describe_fit
from inspector.publish import Publisher, PublisherError
from inspector.runtime import Runtime, StartupError, build, restart_only_changes, retire
from inspector.service import Notifier, Watchdog
from inspector.sources import Source, SourceError, source_class

log = logging.getLogger("inspector.daemon")

EXIT_UNEXPECTED = 1  # start-up failed in a way none of the codes 2-4 foresaw (logged in one line; -v: traceback)
DRAIN_EXTRA_S = 2.0  # beyond deadline_ms, how long SIGTERM waits for frames in flight to be inspected
PUBLISHER_CLOSE_S = 5.0
ARCHIVE_CLOSE_S = 5.0  # at stop, how long the archive writer may take for what is queued (the rest is counted)


class _Events:
    """SourceEvents: camera state goes to the gauge, the log and the broadcast stream (never blocks)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def camera_state(self, connected: bool, detail: str) -> None:
        d = self.daemon
        if d.metrics is not None:
            d.metrics.camera_connected(connected)
        (log.info if connected else log.warning)("camera %s: %s", "connected" if connected else "lost", detail)
        if d.publisher is not None:
            d.publisher.event("camera", connected=connected, detail=detail)


def source_config(config: Config, config_file: str | Path) -> Any:
    """The source section as the source class wants it: a folder path resolved against the config file."""
    cfg = config.source
    if cfg.kind == "folder":
        return cfg.model_copy(update={"path": str(resolve_path(config_file, cfg.path))})
    return cfg


def _curve_keys(config: Config, config_file: str | Path) -> ServerKeys | None:
    """The keys of publish.curve, read and checked now: a start refused (exit 2) names the file at fault."""
    c = config.publish.curve
    if c is None:
        return None
    try:
        return ServerKeys.load(resolve_path(config_file, c.secret_key), resolve_path(config_file, c.authorised_keys))
    except CurveKeyError as exc:
        raise StartupError(2, f"publish.curve: {exc}") from None


class Daemon:
    def __init__(
        self,
        config_file: str | Path,
        *,
        max_frames: int | None = None,
        console: bool = True,
        config_overrides: dict[str, Any] | None = None,
        install_signals: bool = True,
        notifier: Notifier | None = None,
        before_start: Callable[[Daemon], None] | None = None,
    ):
        self.config_file = Path(config_file)
        self.max_frames = max_frames
        self.use_console = console
        self.overrides = config_overrides or {}
        self.install_signals = install_signals
        self.notifier = notifier if notifier is not None else Notifier()
        # Called after everything is up and before the first frame is acquired (embedding, tests: e.g. wait
        # until a subscriber is connected so it sees seq 0).
        self.before_start = before_start
        self.config: Config | None = None
        self.metrics: Metrics | None = None
        self.stats = LiveStats()
        self.publisher: Publisher | None = None
        self.source: Source | None = None
        self.runtime: Runtime | None = None
        self.pipeline: Pipeline | None = None
        self.archive: ArchiveWriter | None = None
        self.watchdog: Watchdog | None = None
        self.console: Console | None = None
        self.metrics_port: int | None = None
        self.reloads: dict[str, int] = {"ok": 0, "invalid": 0, "failed": 0}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._old_handlers: dict[int, Any] = {}
        self._torn_down = False

    # ------------------------------------------------------------------------------------------- config

    def _load(self) -> Config:
        config = load_config(self.config_file)
        if self.overrides:
            # Overrides (benchmarks) replace whole sections; validation of the file itself already happened.
            config = config.model_copy(update=self.overrides)
        return config

    # ------------------------------------------------------------------------------------------ startup

    def start(self) -> None:
        """Bring everything up; raises StartupError (with the exit status) and leaves nothing running."""
        try:
            self._start()
        except BaseException:
            self._teardown()
            raise

    def _start(self) -> None:
        try:
            config = self._load()
        except ConfigError as exc:
            raise StartupError(2, str(exc)) from None
        self.config = config
        line, camera = config.line.name, config.line.camera
        self.metrics = Metrics(line, camera)
        tap = MetricsTap(self.metrics, self.stats)

        # Sockets first: monitors and the PLC gateway connect while the models load, and see the first verdict.
        self.publisher = Publisher(
            config.publish,
            config.topic,
            tap,
            failsafe_result=config.pipeline.failsafe_result,
            curve=_curve_keys(config, self.config_file),
        )
        try:
            self.publisher.start()
        except PublisherError as exc:
            self.publisher = None
            raise StartupError(4, f"publish: {exc}") from None

        if config.archive.enabled:
            # Before the models: their runtime binds its hand-over pool to the writer. A directory that cannot be
            # used is reported (log, event, metric) and retried; inspection starts anyway.
            assert config.archive.path is not None
            self.archive = ArchiveWriter(
                config.archive,
                resolve_path(self.config_file, config.archive.path).resolve(),
                line,
                camera,
                self.publisher.run_id,
                metrics=ArchiveMetrics(line, camera, self.metrics.registry),
                events=self.publisher,
            )
            self.archive.start()

        t0 = time.perf_counter()
        self.runtime = build(config, self.config_file, archive=self.archive)
        log.info(
            "models loaded and warmed up in %.1f s: %s (%s backend, segmenter %s)",
            time.perf_counter() - t0,
            ", ".join(f"{m.role}={m.path.name}" for m in self.runtime.models()),
            config.models.backend,
            config.models.segmenter_mode,
        )

        src_cfg = source_config(config, self.config_file)
        try:
            self.source = source_class(src_cfg.kind)(src_cfg, _Events(self))
            self.source.open()
        except SourceError as exc:
            raise StartupError(4, f"source ({src_cfg.kind}): {exc}") from None
        except ImportError as exc:  # a camera extra that is not installed
            raise StartupError(4, f"source ({src_cfg.kind}): {exc}; install the camera extra") from None

        if config.metrics.enabled:
            try:
                self.metrics_port = self.metrics.serve(config.metrics.bind, config.metrics.port)
            except RuntimeError as exc:
                raise StartupError(4, f"metrics: {exc}") from None
            log.info("metrics on http://%s:%d/metrics", config.metrics.bind, self.metrics_port)
        self._describe(self.runtime)

        # The pipeline parallelises across frames (acquisition beside inference); OpenCV's own threads would only
        # move half of each resize onto the inference core (measured: docs/BENCHMARKS.md).
        cv2.setNumThreads(config.pipeline.preprocess_threads)
        paced = getattr(config.source, "rate_hz", 0.0) is None  # a replay/simulator as fast as we take it
        self.pipeline = Pipeline(
            self.source,
            self.runtime,
            self.publisher,
            self.metrics,
            ring_slots=config.pipeline.ring_slots,
            paced_by_pipeline=paced,
            max_frames=self.max_frames,
        )
        self.publisher.recycle = self.pipeline.recycle  # verdict records go back to the pipeline once sent
        self.pipeline.health.listener = self._on_unhealthy
        if self.install_signals and threading.current_thread() is threading.main_thread():
            for sig, handler in (
                (signal.SIGHUP, self._on_hup),
                (signal.SIGTERM, self._on_term),
                (signal.SIGINT, self._on_term),
            ):
                self._old_handlers[sig] = signal.signal(sig, handler)
        if self.before_start is not None:
            self.before_start(self)
        pipeline = self.pipeline
        health = pipeline.health
        self.watchdog = Watchdog(self.notifier, lambda: pipeline.counters.decided, healthy=lambda: not health.unhealthy)
        self.publisher.event("start", config_hash=self.runtime.config_hash, model_hashes=self.runtime.model_hashes)
        self._report_capacity(self.runtime)
        # READY=1 before the first frame: models are loaded and warmed up, sockets bound, the source open.
        self.notifier.ready(f"inspecting {config.topic}, config {self.runtime.config_hash}")
        self.pipeline.start()
        self.watchdog.start()
        if self.use_console:
            self.console = Console(self.stats, config.console.status_interval_s, pipeline.counters)
            publisher = self.publisher
            self.console.dropped = lambda: publisher.dropped
        log.info(
            "inspecting %s from %s source (config %s, pid %d)",
            config.topic,
            config.source.kind,
            self.runtime.config_hash,
            os.getpid(),
        )

    def _on_unhealthy(self, alarm: Alarm) -> None:
        """The engine became unhealthy (inspector.health). On the inference thread: nothing here blocks."""
        watchdog = self.watchdog is not None and self.watchdog.interval_s is not None and self.notifier.enabled
        log.critical(
            "%s; every frame is rejected from now on; %s",
            alarm.text(),
            "the systemd watchdog is no longer pinged, so systemd restarts the service"
            if watchdog
            else "no systemd watchdog: restart the service by hand",
        )
        if self.metrics is not None:
            self.metrics.engine_healthy(False)
        self.notifier.status(alarm.text())
        if self.publisher is not None:
            self.publisher.event(
                "alarm",
                alarm="engine_unhealthy",
                reason=alarm.reason.value,
                faulty_frames=alarm.faulty_frames,
                window_s=alarm.window_s,
                totals=alarm.totals,
                detail=alarm.detail,
                watchdog=watchdog,
            )

    def _describe(self, rt: Runtime) -> None:
        assert self.metrics is not None
        _log_fit(rt)
        self.metrics.config_info(rt.config_hash, file=str(self.config_file))
        for m in rt.models():
            self.metrics.engine_info(
                m.role,
                backend=rt.config.models.backend,
                path=str(m.path),
                sha256=m.sha256,
                architecture=m.manifest.architecture,
                input=f"{m.manifest.input.height}x{m.manifest.input.width}x{m.manifest.input.channels}",
            )

    def _report_capacity(self, rt: Runtime) -> None:
        """Capacity gauge; when the source is set faster than the pipeline can inspect, a warning and an event.
        With a gated segmenter, also when it would be faster only if the segmenter fired on every frame."""
        assert self.metrics is not None and self.publisher is not None
        if rt.capacity is None:
            return
        fps, flagged, rate = rt.capacity.fps, rt.capacity.fps_all_flagged, configured_rate(rt.config)
        self.metrics.capacity(fps, rate)
        log.info(
            "capacity: %.1f frames/s inspected (batch %d, %.1f ms a batch)%s",
            fps,
            rt.batch_size,
            rt.capacity.batch_s * 1e3,
            "" if flagged is None else f"; {flagged:.1f} frames/s if the gated segmenter fires on every frame",
        )
        if rate is None or rate <= (fps if flagged is None else flagged):
            return
        share = max(0.0, 1 - fps / rate)
        if rate > fps:
            log.warning(
                "the source is set to %.1f frames/s but this pipeline can inspect only about %.1f frames/s (measured "
                "at warm-up): about %.0f%% of the frames will be rejected fail-safe with reason overload, without "
                "being inspected. Lower the frame rate, or make inspection faster: a larger pipeline.batch_size, a "
                "lighter segmenter_mode, a faster backend (docs/RELIABILITY.md)",
                rate,
                fps,
                100 * share,
            )
        else:
            log.warning(
                "the source is set to %.1f frames/s; this pipeline inspects %.1f frames/s while the gated segmenter "
                "fires on no frame, but only %.1f if it fires on every frame: the more frames the recognizer flags, "
                "the more are rejected fail-safe with reason overload, without being inspected (docs/RELIABILITY.md)",
                rate,
                fps,
                flagged,
            )
        fields: dict[str, Any] = {
            "capacity_fps": round(fps, 2),
            "source_rate_fps": rate,
            "batch_size": rt.batch_size,
            "batch_ms": round(rt.capacity.batch_s * 1e3, 2),
            "expected_overload_fraction": round(share, 3),
        }
        if flagged is not None:
            fields["capacity_all_flagged_fps"] = round(flagged, 2)
        self.publisher.event("capacity", **fields)

    # -------------------------------------------------------------------------------------- main loop

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.request_reload()

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> int:
        """start() + wait(): the whole life of `inspector run`. Returns the exit status."""
        try:
            self.start()
        except StartupError as exc:
            for line in exc.problems:  # one line per problem, as check-config prints them
                log.error("cannot start: %s", line)
            return exc.code
        except Exception as exc:  # not foreseen by start(): still one line and a documented status, no traceback
            log.debug("start-up failed", exc_info=True)
            log.error("cannot start: %s: %s", type(exc).__name__, " ".join(str(exc).split()))
            return EXIT_UNEXPECTED
        return self.wait()

    def wait(self) -> int:
        """Serve reloads and the console until stopped (signal, max_frames, end of stream), then shut down."""
        assert self.pipeline is not None
        try:
            while not self._stop.is_set() and not self.pipeline.finished.is_set():
                timeout = 0.25 if self.console is None else max(0.01, min(0.25, self.console.due()))
                self._wake.wait(timeout)
                self._wake.clear()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    self.reload()
                if self.console is not None:
                    self.console.tick()
        finally:
            rc = self._shutdown()
        return rc

    # ----------------------------------------------------------------------------------------- reload

    def reload(self) -> str:
        """Re-read the config file and apply it atomically, or refuse it. Returns ok / invalid / failed.

        Whatever goes wrong (a file that does not validate, an unreadable one, a model that cannot be opened, an
        exception of any type) leaves the running config in force: it is logged once and published as a `reload`
        event with its result and why. Requests arriving during a reload are coalesced into one more reload after
        it (the main loop's event is set again; however many there were, the file is read once more)."""
        assert self.runtime is not None and self.pipeline is not None and self.publisher is not None
        assert self.metrics is not None and self.config is not None
        self.notifier.reloading()
        try:
            result, error = self._reload_once()
        except Exception as exc:  # a bug or exhausted memory: the running config stays all the same
            why = " ".join(str(exc).split())
            error = f"{self.config_file}: reload failed, the running config stays: {type(exc).__name__}: {why}"
            log.debug("reload failed", exc_info=True)  # the traceback for a bug report, with -v
            log.error("%s", error)
            result = "failed"
        finally:
            self.notifier.ready(f"inspecting {self.config.topic}, config {self.runtime.config_hash}")
        self.reloads[result] += 1
        self.metrics.reload(result)
        self.publisher.failsafe_result = self.config.pipeline.failsafe_result  # for its minimal verdicts
        fields: dict[str, Any] = {"result": result, "config_hash": self.runtime.config_hash}
        if error:
            fields["error"] = error
        self.publisher.event("reload", **fields)
        return result

    def _reload_once(self) -> tuple[str, str | None]:
        assert self.runtime is not None and self.pipeline is not None and self.config is not None
        try:
            new = self._load()
        except ConfigError as exc:
            log.error("reload refused, the running config stays:\n%s", exc)
            return "invalid", str(exc)
        changed = restart_only_changes(self.config, new)
        if changed:
            error = (
                f"{self.config_file}: reload refused, nothing applied: {', '.join(changed)} can only change with a "
                "restart (systemctl restart); the running config stays"
            )
            log.error("%s", error)
            return "invalid", error
        try:
            runtime = build(new, self.config_file, previous=self.runtime, archive=self.archive)
        except StartupError as exc:
            log.error("reload failed, the running config stays: %s", exc)
            return "failed", str(exc)
        # Nothing above touched the running runtime; from here on the new one is in force.
        old_capacity = self.runtime.capacity
        old = self.pipeline.swap(runtime)
        self.runtime, self.config = runtime, new
        if self.archive is not None:
            self.archive.configure(new.archive)
        if old is not None and old is not runtime:
            retire(old, runtime)
        self._describe(runtime)
        if runtime.capacity is not old_capacity:
            self._report_capacity(runtime)
        log.info("reloaded %s: config %s", self.config_file, runtime.config_hash)
        return "ok", None

    # --------------------------------------------------------------------------------------- shutdown

    def _shutdown(self) -> int:
        assert self.pipeline is not None and self.publisher is not None and self.runtime is not None
        # STOPPING=1 first: systemd then knows the unit is going down (and the watchdog pauses with us).
        self.notifier.stopping()
        if self.watchdog is not None:
            self.watchdog.stop()
        drain_s = self.runtime.config.pipeline.deadline_ms / 1000 + DRAIN_EXTRA_S
        self.pipeline.stop(drain_s)
        if not self.pipeline.join(drain_s + 30):
            log.error("pipeline threads did not stop; exiting anyway")
        counters = self.pipeline.counters
        reason = (
            self.pipeline.fatal
            or ("end of stream" if self.pipeline.end_of_stream else None)
            or ("max frames" if self.max_frames is not None and counters.acquired >= self.max_frames else "stopped")
        )
        if self.archive is not None:
            # Before the stop event: the writer's last alarm (if any) still reaches the broadcast stream.
            self.archive.close(ARCHIVE_CLOSE_S)
            log.info(
                "archive: %d records written this run, %d deleted for space, dropped %s",
                self.archive.written,
                self.archive.deleted,
                self.archive.dropped or "none",
            )
        self.publisher.event("stop", reason=reason, acquired=counters.acquired, decided=counters.decided)
        self.publisher.close(PUBLISHER_CLOSE_S)
        if self.console is not None:
            self.console.finish()
        log.info(
            "stopped (%s): acquired %d, published %d, dropped on the way out %d, not inspected %s",
            reason,
            counters.acquired,
            self.publisher.published,
            self.publisher.dropped,
            counters.not_inspected or "none",
        )
        self._teardown()
        return 1 if self.pipeline.fatal else 0

    def _teardown(self) -> None:
        """Release whatever was brought up (also after a failed start). Idempotent."""
        if self._torn_down:
            return
        self._torn_down = True
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.publisher is not None and not self.pipeline:
            self.publisher.close(1.0)
        if self.archive is not None:
            self.archive.close(0.5)  # a no-op when the shutdown already closed it
        if self.source is not None:
            try:
                self.source.close()
            except Exception as exc:
                log.warning("source.close() failed: %s", exc)
            self.source = None
        if self.runtime is not None:
            retire(self.runtime, None)
        if self.metrics is not None:
            self.metrics.close()
        self.notifier.close()


def _log_fit(rt: Runtime) -> None:
    """How frames become each model's input: an aspect-ratio change or a shrink past the model's scale is a
    warning at start-up (and reload), never silent."""
    src = rt.config.source
    for m in rt.models():
        pre, size = m.manifest.preprocessing, (m.manifest.input.height, m.manifest.input.width)
        text, changed = describe_fit((src.height, src.width), pre.fit, pre.scale, size)
        if src.kind == "folder":
            text += " (the ring slot's size; each replayed image is resized from its own, once)"
        (log.warning if changed else log.info)("%s: %s", m.role, text)
