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
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from inspector.frames import CHANNELS, FrameRing, Reason, Verdict
from inspector.preprocess import Preprocessor
from inspector.runtime import InputKey, Runtime, input_key
from inspector.sources import EndOfStream, Source, SourceError

log = logging.getLogger(__name__)

GRAB_TIMEOUT_S = 0.1  # a grab never blocks longer: the acquisition thread must notice stop() promptly
IDLE_WAIT_S = 0.05  # inference thread's wait for work; also bounds how late a reload swap can be picked up
ERROR_LOG_INTERVAL_S = 5.0  # an inference error repeating at frame rate is logged once per interval, then counted


class PipelineMetrics(Protocol):
    """What the pipeline reports per frame and per batch (`inspector.metrics.Metrics` in the daemon)."""

    def acquired(self) -> None: ...
    def stage(self, name: str, seconds: float) -> None: ...
    def camera_drops(self, n: int) -> None: ...
    def drop(self, cause: str) -> None: ...
    def ring_occupancy(self, in_use: int, slots: int) -> None: ...


class VerdictSink(Protocol):
    """Where decided verdicts go, in sequence order (`inspector.publish.Publisher` in the daemon).
    `submit` never blocks; a verdict it cannot take is counted as dropped by the sink itself."""

    def submit(self, verdict: Verdict) -> bool: ...


# ----------------------------------------------------------------------------------------------- pipeline


@dataclass(slots=True)
class _Item:
    """One queued frame: its ring slot (-1 = overload, never buffered) and its verdict-to-be."""

    slot: int
    verdict: Verdict
    bad: str | None = None
    prepped: InputKey | None = None  # input_key of the recognizer input already made from this slot, if any


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
        source: Source,
        runtime: Runtime,
        publisher: VerdictSink,
        metrics: PipelineMetrics,
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
            for i, item in enumerate(todo):
                held.append(item.slot)
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
                result, reason, defects, score = rt.decider.decide(block_scores[i], pix)
                v.segmenter_ran = pix is not None
                if v.t_acquired_mono_ns < deadline_at:
                    # Decided, but after the deadline: the part has gone past the reject gate, so the answer
                    # is a timeout (fail-safe), with what the inspection found kept in the detail.
                    self._failsafe(rt, v, Reason.TIMEOUT, f"decided after the deadline; inspection said {result}")
                    v.recognizer_score = score
                    continue
                v.result, v.reason, v.defects, v.recognizer_score = result, reason, defects, score
                v.t_decided_ns = decided
                v.detail = None
                v.config_hash, v.model_hashes = rt.config_hash, rt.model_hashes
                self.counters.inspected += 1
            metrics.stage("decision", time.perf_counter() - t3)
            self.counters.batches += 1
            self.counters.batched_frames += n
        except Exception as exc:
            self._release_held()
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
