"""The hot path: acquisition thread -> frame ring -> inference thread -> publisher.

Threads and what they own
- acquisition: `source.grab()` into a free ring slot (the frame's only copy), a sequence number per acquired
  frame (+1, never skipped), then a small record into the work queue. When every slot is busy the frame is
  still read, into one preallocated scratch slot, so the camera's buffer is consumed and the part is counted,
  and it is queued as an overload (its verdict is the fail-safe one). A source paced by the pipeline
  (`rate_hz: null` on synthetic/folder) is not a free-running camera: there the acquisition thread waits for a
  free slot instead, so "as fast as possible" means as fast as inference takes frames, not a flood of overloads.
- inference: takes the frames already queued, up to `pipeline.batch_size` (never waits to fill a batch),
  rejects those past their deadline or bad, preprocesses the rest into the backend's own input buffer, runs the
  recognizer on all, the segmenter per `segmenter_mode`, decides, and hands the verdicts to the publisher in
  sequence order. Anything that raises turns that batch into `error` verdicts; the thread goes on.
- main (daemon): builds `Runtime` bundles (config + loaded models) off the hot path; `swap()` hands one to the
  inference thread, which adopts it between two batches, so a batch is decided by exactly one config.

Exactly one verdict per acquired frame: every queued item produces one `Verdict` and one `publisher.submit`.
With the publisher's own counters, acquired == published + dropped (tests/test_pipeline.py scrapes this).

Allocation per frame: one small `Verdict` record (it travels to the publisher thread); no pixel buffers. Pixel
copies per frame: source -> ring slot (1), slot -> network input (the resize, 1), and for frames the segmenter
sees with the same input spec as the recognizer, one network-input-sized row copy instead of a second resize.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspector.archive import FrameArchive
from inspector.archive.writer import ArchiveContext, ArchiveWriter
from inspector.backends import BackendError, backend_class
from inspector.config import Config, ConfigError, ModelSpec, load_config, resolve_path
from inspector.decision import Decider, load_ignore_mask
from inspector.frames import CHANNELS, FrameRing, Reason, Verdict
from inspector.manifest import ManifestError, ModelManifest, check_expectations, read_manifest
from inspector.preprocess import Preprocessor
from inspector.sources import EndOfStream, SourceError

log = logging.getLogger(__name__)

GRAB_TIMEOUT_S = 0.1  # a grab never blocks longer: the acquisition thread must notice stop() promptly
IDLE_WAIT_S = 0.05  # inference thread's wait for work; also bounds how late a reload swap can be picked up
ERROR_LOG_INTERVAL_S = 5.0  # an inference error repeating at frame rate is logged once per interval, then counted

# Sections whose change needs a restart: the ring, the sockets, the exporter and the source are built once, and
# `line` names the ZeroMQ topic and the metrics labels. A reload touching any of them is refused as a whole.
RESTART_ONLY = (
    "line",
    "source",
    "publish",
    "metrics",
    "pipeline.ring_slots",
    "archive.enabled",
    "archive.path",
    "archive.pool_slots",
)


class StartupError(Exception):
    """Cannot start (or reload): `code` is the process exit status (2 config, 3 model/backend, 4 source/publish)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------------------ runtime


@dataclass(eq=False)
class LoadedModel:
    """One backend with its model, keyed so that a reload reuses it when nothing about it changed."""

    role: str
    key: str  # backend, path, file hash, settings and batch: equal keys = the very same loaded model
    path: Path
    manifest: ModelManifest
    backend: Any

    @property
    def sha256(self) -> str:
        return self.manifest.sha256


@dataclass(eq=False)
class Runtime:
    """Everything a batch is decided with, built together and swapped together (hot reload is atomic)."""

    config: Config
    config_hash: str
    recognizer: LoadedModel
    segmenter: LoadedModel | None  # None when segmenter_mode is never
    rec_pre: Preprocessor
    seg_pre: Preprocessor | None
    seg_shares_input: bool  # same input spec: a segmenter row is a copy of the recognizer row, not a 2nd resize
    decider: Decider
    model_hashes: dict[str, str]
    mode: str  # always / gated / never
    failsafe: str  # pass / reject
    deadline_ns: int
    batch_size: int
    archive: FrameArchive | None = None  # the archive's hand-over for this runtime; None when archiving is off

    def models(self) -> list[LoadedModel]:
        return [m for m in (self.recognizer, self.segmenter) if m is not None]

    @property
    def rec_key(self) -> tuple:
        """What the recognizer's input depends on: frames preprocessed for an equal key can be reused."""
        return input_key(self.recognizer.manifest)


def input_key(m: ModelManifest) -> tuple:
    return (m.input.height, m.input.width, m.input.channels, m.preprocessing.color, m.preprocessing.resize)


def backend_settings(config: Config) -> Any:
    """ONNX Runtime takes its own section; both GPU backends take models.tensorrt."""
    return config.models.onnxruntime if config.models.backend == "onnxruntime" else config.models.tensorrt


def load_model_manifest(backend: str, path: Path, settings: Any, batch: int) -> ModelManifest:
    """The one place where loading a manifest depends on the backend (engines say how to rebuild them)."""
    if backend == "tensorrt":
        from inspector.backends.tensorrt import read_engine_manifest

        return read_engine_manifest(path, settings, batch)
    return read_manifest(path)


def _model_key(config: Config, path: Path, sha256: str) -> str:
    settings = backend_settings(config)
    return json.dumps(
        [config.models.backend, str(path), sha256, settings.model_dump(mode="json"), config.pipeline.batch_size]
    )


def _load_model(
    role: str,
    spec: ModelSpec,
    config: Config,
    config_file: str | Path,
    previous: Runtime | None,
) -> tuple[LoadedModel, bool]:
    """-> (model, newly loaded). Raises StartupError(3) with the reason in words."""
    path = resolve_path(config_file, spec.path)
    where = f"models.{role} ({path})"
    settings = backend_settings(config)
    batch = config.pipeline.batch_size
    try:
        manifest = load_model_manifest(config.models.backend, path, settings, batch)
        check_expectations(
            manifest, task=role, expect_classes=spec.expect_classes, expect_input=spec.expect_input, where=where
        )
    except (ManifestError, BackendError) as exc:
        raise StartupError(3, f"{where}: {exc}" if where not in str(exc) else str(exc)) from None
    key = _model_key(config, path, manifest.sha256)
    if previous is not None:
        for old in previous.models():
            if old.key == key and old.role == role:
                return old, False
    try:
        backend = backend_class(config.models.backend)(path, manifest, settings, batch)
    except BackendError as exc:
        raise StartupError(3, f"{where}: {exc}") from None
    except Exception as exc:  # a backend library's own exception types: still a model problem, said plainly
        raise StartupError(3, f"{where}: {config.models.backend} cannot load the model: {exc}") from None
    return LoadedModel(role, key, path, manifest, backend), True


def _preprocessor(model: LoadedModel, config: Config) -> Preprocessor:
    m = model.manifest
    pre = Preprocessor(
        config.pipeline.batch_size,
        (m.input.height, m.input.width),
        m.preprocessing.color,
        config.source.pixel_format,
        m.preprocessing.resize,
    )
    buf = model.backend.input_buffer()
    if buf.shape[1:] != pre.buffer.shape[1:] or buf.shape[0] < config.pipeline.batch_size or buf.dtype != np.uint8:
        raise StartupError(3, f"models.{model.role}: backend input {buf.shape} does not fit {pre.buffer.shape}")
    # Preprocess straight into the backend's input: no copy between preprocessing and inference.
    pre.buffer = buf
    return pre


def warm_up(model: LoadedModel, runs: int, batch: int) -> None:
    """Run the model on its (zeroed) input so the first real frame does not pay for lazy initialisation."""
    for _ in range(runs):
        model.backend.run(batch)


def build_runtime(
    config: Config,
    config_file: str | Path,
    previous: Runtime | None = None,
    archive: ArchiveWriter | None = None,
) -> Runtime:
    """Load (or reuse from `previous`) the models and build the decider. Raises StartupError (2 or 3).

    Models are reused when backend, path, file hash, backend settings and batch size are unchanged; new ones
    are warmed up here, off the hot path, before the runtime is handed to the inference thread.
    """
    mode = config.models.segmenter_mode
    loaded: list[LoadedModel] = []
    try:
        recognizer, new = _load_model("recognizer", config.models.recognizer, config, config_file, previous)
        if new:
            loaded.append(recognizer)
        segmenter = None
        if mode != "never":
            assert config.models.segmenter is not None  # the config validator guarantees it
            segmenter, new = _load_model("segmenter", config.models.segmenter, config, config_file, previous)
            if new:
                loaded.append(segmenter)
        src = config.source
        frame_size = (src.height, src.width)
        ignore_mask = None
        if config.decision.ignore_regions.mask:
            mask_path = resolve_path(config_file, config.decision.ignore_regions.mask)
            try:
                ignore_mask = load_ignore_mask(mask_path, frame_size)
            except (OSError, ValueError) as exc:
                raise StartupError(2, f"decision.ignore_regions.mask ({mask_path}): {exc}") from None
        try:
            decider = Decider(
                config.decision,
                frame_size,
                recognizer.manifest,
                segmenter.manifest if segmenter else None,
                ignore_mask,
            )
        except ValueError as exc:
            raise StartupError(2, f"decision: {exc}") from None
        rec_pre = _preprocessor(recognizer, config)
        seg_pre = _preprocessor(segmenter, config) if segmenter else None
        shares = False
        if segmenter is not None:
            r, s = recognizer.manifest, segmenter.manifest
            shares = r.input == s.input and (r.preprocessing.resize, r.preprocessing.color) == (
                s.preprocessing.resize,
                s.preprocessing.color,
            )
        for model in loaded:
            warm_up(model, config.pipeline.warmup_runs, config.pipeline.batch_size)
    except BaseException:
        for model in loaded:  # nothing half-built survives a failed build
            model.backend.close()
        raise
    hashes = {m.role: m.sha256 for m in (recognizer, segmenter) if m is not None}
    sink = None
    if archive is not None:
        # The archive's pool is shaped for these models' outputs and allocated here, off the hot path.
        ctx = ArchiveContext.build(
            config,
            config.config_hash(),
            recognizer.manifest,
            segmenter.manifest if segmenter else None,
            ignore_mask,
        )
        sink = archive.bind(ctx)
    return Runtime(
        config=config,
        config_hash=config.config_hash(),
        recognizer=recognizer,
        segmenter=segmenter,
        rec_pre=rec_pre,
        seg_pre=seg_pre,
        seg_shares_input=shares,
        decider=decider,
        model_hashes=hashes,
        mode=mode,
        failsafe=config.pipeline.failsafe_result,
        deadline_ns=int(config.pipeline.deadline_ms * 1e6),
        batch_size=config.pipeline.batch_size,
        archive=sink,
    )


def close_retired(old: Runtime, current: Runtime | None) -> None:
    """Close the models of a runtime no longer in use, except those the current one reuses."""
    keep = {id(m) for m in current.models()} if current is not None else set()
    for model in old.models():
        if id(model) not in keep:
            model.backend.close()


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Dotted names of the restart-only settings that differ between two configs (empty: reloadable)."""
    changed: list[str] = []
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    for name in RESTART_ONLY:
        va, vb = a, b
        for part in name.split("."):
            va, vb = va.get(part), vb.get(part)
        if va != vb:
            changed.extend(_diff_paths(name, va, vb))
    return changed


def _diff_paths(prefix: str, a: Any, b: Any) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.extend(_diff_paths(f"{prefix}.{key}", a.get(key), b.get(key)))
        return out
    return [prefix]


# ----------------------------------------------------------------------------------------------- pipeline


@dataclass(slots=True)
class _Item:
    """One queued frame: its ring slot (-1 = overload, never buffered) and its verdict-to-be."""

    slot: int
    verdict: Verdict
    bad: str | None = None
    prepped: tuple | None = None  # input_key of the recognizer input already made from this slot, if any


@dataclass
class PipelineCounters:
    acquired: int = 0
    decided: int = 0  # verdicts handed to the publisher (submitted or counted dropped by it)
    inspected: int = 0
    not_inspected: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    batched_frames: int = 0


class Pipeline:
    """Acquisition and inference threads around one FrameRing. See the module docstring."""

    def __init__(
        self,
        source: Any,
        runtime: Runtime,
        publisher: Any,
        metrics: Any,
        *,
        ring_slots: int,
        paced_by_pipeline: bool,
        max_frames: int | None = None,
    ):
        cfg = runtime.config.source
        self.source = source
        self.runtime = runtime
        self.publisher = publisher
        self.metrics = metrics
        self.max_frames = max_frames
        self.paced_by_pipeline = paced_by_pipeline
        shape = (cfg.height, cfg.width, CHANNELS[cfg.pixel_format])
        self.ring = FrameRing(ring_slots, *shape)
        # Where an overload frame is read to: it must leave the camera, but there is no slot to keep it in.
        self._scratch = np.zeros(shape, np.uint8)
        # The recognizer's resize runs in the acquisition thread, into one network-input row per slot: it then
        # overlaps with inference (OpenCV and ONNX Runtime both release the GIL) instead of adding to it. The
        # inference thread copies the row into the batch (input-sized, far smaller than the frame). A reload to
        # a recognizer with another input spec falls back to resizing in the inference thread (key mismatch).
        m = runtime.recognizer.manifest
        self._prep_key = input_key(m)
        self._prep = Preprocessor(
            ring_slots, (m.input.height, m.input.width), m.preprocessing.color, cfg.pixel_format, m.preprocessing.resize
        )
        self.counters = PipelineCounters()
        self.fatal: str | None = None  # set when the source failed for good
        self.end_of_stream = False

        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._freed = threading.Event()
        self._stop_acquiring = threading.Event()
        self._acquisition_done = False
        self._drain_deadline: float | None = None  # monotonic time after which queued frames get SHUTDOWN
        self._pending: Runtime | None = None
        self._swapped = threading.Condition(threading.Lock())
        self._retired: Runtime | None = None
        self.finished = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_error_log = 0.0
        self._errors_unlogged = 0
        # Reused per batch (no per-batch list allocation on the hot path).
        self._items: list[_Item] = []
        self._todo: list[_Item] = []
        self._held: list[int] = []
        self._seg_rows: list[int] = []

    # ------------------------------------------------------------------------------------------ control

    def start(self) -> None:
        self.source.start()
        self.metrics.ring_occupancy(0, self.ring.slots)
        for name, target in (("acquisition", self._acquire_loop), ("inference", self._infer_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, drain_s: float) -> None:
        """Stop acquiring; frames in flight are inspected for up to drain_s, the rest get SHUTDOWN verdicts."""
        with self._cond:
            if self._drain_deadline is None:
                self._drain_deadline = time.monotonic() + drain_s
            self._cond.notify_all()
        self._stop_acquiring.set()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for both threads to end (after stop(), max_frames or end of stream). True when they did."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def swap(self, runtime: Runtime, timeout_s: float = 30.0) -> Runtime | None:
        """Hand a new runtime to the inference thread; returns the old one once it is out of use (None if the
        inference thread has ended, in which case the new runtime is simply adopted)."""
        with self._swapped:
            self._retired = None
            self._pending = runtime
            end = time.monotonic() + timeout_s
            while self._retired is None:
                if not self._threads[1].is_alive():
                    old, self.runtime, self._pending = self.runtime, runtime, None
                    return old
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the inference thread did not reach a batch boundary")
                self._swapped.wait(min(left, IDLE_WAIT_S))
            old, self._retired = self._retired, None
            return old

    def _adopt_pending(self) -> None:
        # Inference thread only, between batches: the swap itself is one reference assignment.
        if self._pending is None:
            return
        with self._swapped:
            if self._pending is not None:
                self._retired, self.runtime, self._pending = self.runtime, self._pending, None
                self._swapped.notify_all()

    # -------------------------------------------------------------------------------------- acquisition

    def _acquire_loop(self) -> None:
        ring, source, metrics = self.ring, self.source, self.metrics
        seq = 0
        try:
            while not self._stop_acquiring.is_set():
                if self.max_frames is not None and seq >= self.max_frames:
                    break
                self._freed.clear()
                slot = ring.acquire()
                if slot is None and self.paced_by_pipeline:
                    self._freed.wait(IDLE_WAIT_S)  # backpressure: a replay waits for inference
                    continue
                out = self._scratch if slot is None else ring.view(slot)
                t0 = time.perf_counter()
                try:
                    grab = source.grab(out, GRAB_TIMEOUT_S)
                except BaseException:
                    if slot is not None:
                        self._release(slot)
                    raise
                if grab is None:  # no frame within the timeout (or a camera reconnecting)
                    if slot is not None:
                        self._release(slot)
                    continue
                t_mono = time.monotonic_ns()
                v = Verdict(
                    seq=seq,
                    camera_frame_id=grab.camera_frame_id,
                    result="reject",
                    reason=Reason.ERROR,  # overwritten when decided
                    t_acquired_ns=time.time_ns(),
                    t_decided_ns=0,
                    timestamp_source=grab.timestamp_source,
                    t_device_ns=grab.t_device_ns,
                    camera_drops_before=grab.camera_drops_before,
                    truth=grab.truth,
                    t_acquired_mono_ns=t_mono,
                )
                seq += 1
                metrics.acquired()
                metrics.stage("acquire", time.perf_counter() - t0)
                metrics.camera_drops(grab.camera_drops_before)
                item = _Item(-1 if slot is None else slot, v, grab.bad_frame)
                if slot is not None and grab.bad_frame is None:
                    t1 = time.perf_counter()
                    self._prep.put(slot, out)
                    item.prepped = self._prep_key
                    metrics.stage("preprocess", time.perf_counter() - t1)
                with self._cond:
                    self.counters.acquired = seq
                    self._queue.append(item)
                    self._cond.notify()
        except EndOfStream:
            self.end_of_stream = True
            log.info("source: end of stream after %d frames", seq)
        except SourceError as exc:
            self.fatal = f"source failed: {exc}"
            log.error("%s", self.fatal)
        except Exception as exc:  # a source bug must not leave frames without verdicts: stop cleanly instead
            self.fatal = f"source raised {type(exc).__name__}: {exc}"
            log.exception("acquisition stopped")
        finally:
            try:
                source.stop()
            except Exception as exc:
                log.warning("source.stop() failed: %s", exc)
            with self._cond:
                self._acquisition_done = True
                self._cond.notify_all()

    def _release(self, slot: int) -> None:
        self.ring.release(slot)
        self._freed.set()

    # ---------------------------------------------------------------------------------------- inference

    def _infer_loop(self) -> None:
        items = self._items
        try:
            while True:
                self._adopt_pending()
                with self._cond:
                    if not self._queue:
                        if self._acquisition_done:
                            break
                        self._cond.wait(IDLE_WAIT_S)
                        continue
                    # Take what is waiting, up to batch_size inspectable frames; never wait to fill a batch.
                    limit = self.runtime.batch_size
                    n = 0
                    while self._queue and n < limit:
                        item = self._queue.popleft()
                        items.append(item)
                        if item.slot >= 0 and item.bad is None:
                            n += 1
                self._process(items)
                items.clear()
        finally:
            self._adopt_pending()
            self.finished.set()

    def _process(self, items: list[_Item]) -> None:
        rt = self.runtime
        now = time.monotonic_ns()
        shutting = self._drain_deadline is not None and time.monotonic() > self._drain_deadline
        todo = self._todo
        todo.clear()
        for item in items:
            v = item.verdict
            if item.slot < 0:
                self._failsafe(rt, v, Reason.OVERLOAD, f"all {self.ring.slots} ring slots were busy")
                continue
            if item.bad is not None:
                self._release(item.slot)
                self._failsafe(rt, v, Reason.BAD_FRAME, item.bad)
            elif shutting:
                self._release(item.slot)
                self._failsafe(rt, v, Reason.SHUTDOWN, "in flight at shutdown, not inspected within the stop timeout")
            elif now - v.t_acquired_mono_ns > rt.deadline_ns:
                self._release(item.slot)
                waited = (now - v.t_acquired_mono_ns) / 1e6
                self._failsafe(rt, v, Reason.TIMEOUT, f"waited {waited:.0f} ms, deadline {rt.deadline_ns / 1e6:g} ms")
            else:
                todo.append(item)
        if todo:
            self._inspect(rt, todo)
        self.metrics.ring_occupancy(self.ring.in_use(), self.ring.slots)
        submit = self.publisher.submit
        for item in items:
            submit(item.verdict)
        with self._cond:
            self.counters.decided += len(items)

    def _inspect(self, rt: Runtime, todo: list[_Item]) -> None:
        n = len(todo)
        held = self._held
        metrics = self.metrics
        try:
            # The segmenter's rows are written here only when it sees every frame and cannot copy them.
            seg_upfront = rt.seg_pre is not None and rt.mode == "always" and not rt.seg_shares_input
            rec_key = rt.rec_key
            sink = rt.archive
            for i, item in enumerate(todo):
                held.append(item.slot)
                if sink is not None:  # a bounded copy, so the slot can still be released before inference
                    sink.stage(i, self.ring.view(item.slot))
                if item.prepped == rec_key:
                    np.copyto(rt.rec_pre.buffer[i], self._prep.buffer[item.slot])
                else:
                    rt.rec_pre.put(i, self.ring.view(item.slot))
                if seg_upfront:
                    rt.seg_pre.put(i, self.ring.view(item.slot))
            # Gated with a different input spec needs the pixels again after the recognizer; otherwise the
            # slots are free now, before inference, so acquisition can reuse them while the models run.
            keep = rt.mode == "gated" and not rt.seg_shares_input
            if not keep:
                self._release_held()
            t1 = time.perf_counter()

            block_scores = rt.recognizer.backend.run(n)["block_scores"]
            t2 = time.perf_counter()
            metrics.stage("recognizer", t2 - t1)

            rows = self._seg_rows
            rows.clear()
            pixel_scores = None
            if rt.segmenter is not None and rt.seg_pre is not None:
                if rt.mode == "always":
                    rows.extend(range(n))
                else:
                    rows.extend(i for i in range(n) if rt.decider.flagged(block_scores[i]))
                if rows:
                    seg_in = rt.seg_pre.buffer
                    for j, i in enumerate(rows):
                        if rt.seg_shares_input:
                            np.copyto(seg_in[j], rt.rec_pre.buffer[i])  # a small row copy instead of a resize
                        elif not seg_upfront:
                            rt.seg_pre.put(j, self.ring.view(todo[i].slot))
                    pixel_scores = rt.segmenter.backend.run(len(rows))["pixel_scores"]
                    metrics.stage("segmenter", time.perf_counter() - t2)
            self._release_held()

            t3 = time.perf_counter()
            decided = time.time_ns()
            deadline_at = time.monotonic_ns() - rt.deadline_ns
            j = 0
            for i, item in enumerate(todo):
                v = item.verdict
                pix = None
                if pixel_scores is not None and j < len(rows) and rows[j] == i:
                    pix = pixel_scores[j]
                    j += 1
                decision = rt.decider.decide(block_scores[i], pix)
                result, reason, defects, score = decision
                v.segmenter_ran = pix is not None
                if v.t_acquired_mono_ns < deadline_at:
                    # Decided, but after the deadline: the part has gone past the reject gate, so the answer
                    # is a timeout (fail-safe), with what the inspection found kept in the detail.
                    self._failsafe(rt, v, Reason.TIMEOUT, f"decided after the deadline; inspection said {result}")
                    v.recognizer_score = score
                else:
                    v.result, v.reason, v.defects, v.recognizer_score = result, reason, defects, score
                    v.t_decided_ns = decided
                    v.detail = None
                    v.config_hash, v.model_hashes = rt.config_hash, rt.model_hashes
                    self.counters.inspected += 1
                if sink is not None:  # returns at once: the scores join the staged copy, or a counted drop
                    sink.offer(i, v, decision, block_scores[i], pix)
            metrics.stage("decision", time.perf_counter() - t3)
            self.counters.batches += 1
            self.counters.batched_frames += n
        except Exception as exc:
            self._release_held()
            if rt.archive is not None:
                rt.archive.discard()
            text = f"{type(exc).__name__}: {exc}"
            self._log_error(text, n)
            for item in todo:
                item.verdict.segmenter_ran = False
                item.verdict.defects = []
                self._failsafe(rt, item.verdict, Reason.ERROR, text[:500])

    def _release_held(self) -> None:
        for slot in self._held:
            self._release(slot)
        self._held.clear()

    def _failsafe(self, rt: Runtime, v: Verdict, reason: Reason, detail: str) -> None:
        v.result = rt.failsafe  # type: ignore[assignment]
        v.reason = reason
        v.detail = detail
        v.t_decided_ns = time.time_ns()
        v.recognizer_score = None
        v.config_hash, v.model_hashes = rt.config_hash, rt.model_hashes
        self.metrics.drop(reason.value)
        c = self.counters.not_inspected
        c[reason.value] = c.get(reason.value, 0) + 1

    def _log_error(self, text: str, n: int) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            more = (
                f" ({self._errors_unlogged} more failed batches since the last report)" if self._errors_unlogged else ""
            )
            log.error("inference failed, %d frame(s) get error verdicts: %s%s", n, text, more)
            self._last_error_log = now
            self._errors_unlogged = 0
        else:
            self._errors_unlogged += 1


# -------------------------------------------------------------------------------------------- benchmark


def benchmark(
    config_path: str | Path, seconds: float, *, settle_s: float = 1.0, update: dict[str, dict] | None = None
) -> dict:
    """Run the daemon in-process on the config's source for `seconds` and measure it.

    No metrics server and no actuator channel; the broadcast socket binds a free port. Frames from the first
    `settle_s` are not counted (thread start-up, first batches). `update` changes fields of sections, e.g.
    {"models": {"segmenter_mode": "never"}} (paths in the file stay relative to it). Returns frames/s of
    verdicts published, acquisition-to-publish p50/p99 (ms) over the measured window, and the counts.
    """
    from inspector.daemon import Daemon

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise StartupError(2, str(exc)) from None
    publish = config.publish.model_copy(
        update={
            "broadcast": config.publish.broadcast.model_copy(update={"bind": "tcp://127.0.0.1:*"}),
            "actuator": None,
        }
    )
    overrides = {"publish": publish, "metrics": config.metrics.model_copy(update={"enabled": False})}
    for section, fields in (update or {}).items():
        overrides[section] = getattr(config, section).model_copy(update=fields)
    daemon = Daemon(config_path, console=False, config_overrides=overrides, install_signals=False)
    daemon.start()
    stats = daemon.stats
    try:
        time.sleep(settle_s)
        stats.begin_window(capacity=1 << 20)
        t0 = time.perf_counter()
        time.sleep(seconds)
        window = stats.end_window()
        elapsed = time.perf_counter() - t0
    finally:
        daemon.stop()
        rc = daemon.wait()
    lat = window["latencies_s"]
    return {
        "fps": window["published"] / elapsed,
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan"),
        "latency_ms_p99": float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan"),
        "seconds": elapsed,
        "published": window["published"],
        "by_reason": window["by_reason"],
        "segmented": window["segmented"],
        "acquired_total": daemon.pipeline.counters.acquired if daemon.pipeline else 0,
        "mean_batch": (
            daemon.pipeline.counters.batched_frames / max(1, daemon.pipeline.counters.batches)
            if daemon.pipeline
            else 0.0
        ),
        "exit_code": rc,
    }
