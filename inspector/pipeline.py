"""The hot path: acquisition thread -> frame ring -> inference thread -> publisher.

Threads and what they own
- acquisition: `source.grab()` into a free ring slot (the frame's only copy), a sequence number per acquired
  frame (+1, never skipped), the recognizer's resize into that slot's input row (when fewer than a batch of
  frames wait; behind a backlog the inference thread resizes the frames it admits, so that shed frames cost no
  resize), then the frame's ticket into the work queue. When every slot is busy the frame is still read, into
  one preallocated scratch slot, so the camera's buffer is consumed and the part is counted, and it is queued
  as an overload (its verdict is the fail-safe one). A source paced by the pipeline (`rate_hz: null` on
  synthetic/folder) is not a free-running camera: there the acquisition thread waits instead, for a free slot
  and while a batch of frames is already waiting, so "as fast as possible" means as fast as inference takes
  frames, not a flood of overloads.
- inference: admission (`_admit`): takes the frames already queued, up to `pipeline.batch_size` (never waits
  to fill a batch), and rejects at once, reason overload, those predicted to miss their deadline and the oldest
  of a backlog larger than can be decided in time (the prediction: `capacity.ServiceTime`, seeded at warm-up,
  updated by every batch; the policy and why: docs/RELIABILITY.md). It rejects the bad ones, copies the rest's
  input rows into the backend's own input buffer,
  runs the recognizer on all, screens the whole batch at once (`Decider.screen`: thresholds and top scores in
  a few NumPy calls), runs the segmenter per `segmenter_mode` and connected components only where something
  fired, and hands the verdicts to the publisher in sequence order. Anything that raises turns that batch into
  `error` verdicts; the thread goes on.
- main (daemon): builds `Runtime` bundles (config + loaded models) off the hot path; `swap()` hands one to the
  inference thread, which adopts it between two batches, so a batch is decided by exactly one config.

Exactly one verdict per acquired frame: every queued ticket becomes one verdict and one `publisher.submit`.
With the publisher's own counters, acquired == published + dropped (tests/test_pipeline.py scrapes this).

Allocation per frame: none in steady state. A frame travels as a `Ticket` (its verdict plus where its pixels
are) taken from a pool and given back by the publisher once the verdict is sent or dropped; the pool only grows
while more frames are in flight than ever before. Per batch, no lists are allocated (reused). A rejected part's
defect blobs are new objects (they are the verdict's content). tools/hot_path_alloc.py shows it with tracemalloc.
Pixel copies per frame: source -> ring slot (1), slot -> network input (the resize, 1), input row -> backend
input (a network-input-sized copy), and for frames the segmenter sees with the recognizer's input spec, one more
such row copy instead of a second resize.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from inspector.capacity import ServiceTime, measure
from inspector.decision import NO_DEFECTS, Geometry
from inspector.frames import CHANNELS, FrameRing, Reason, Verdict
from inspector.health import EngineHealth
from inspector.outputs import OutputGuard
from inspector.preprocess import Preprocessor
from inspector.runtime import InputKey, Runtime, batch_work, input_key, segment_work
from inspector.sources import EndOfStream, Grab, Source, SourceError
from inspector.wakeup import Wakeup

log = logging.getLogger(__name__)

GRAB_TIMEOUT_S = 0.1  # a grab never blocks longer: the acquisition thread must notice stop() promptly
IDLE_WAIT_S = 0.05  # inference thread's wait for work; also bounds how late a reload swap can be picked up
ERROR_LOG_INTERVAL_S = 5.0  # a fault repeating at frame rate is logged once per interval and cause, then counted
# When admission has let no frame through for this long, it lets one through whatever the estimate says: the only
# way a service-time estimate inflated by a stall can come down again when no batch can run within the deadline.
PROBE_AFTER_NS = 1_000_000_000
# The share of the deadline that admission lets the backlog take (docs/RELIABILITY.md): the rest is the inspected
# frames' margin for what no estimate foresees (a stall of the machine, a batch on which the segmenter fires on
# every frame). Under sustained overload a frame is decided about this far into its deadline.
BACKLOG_SHARE = 0.5
NO_HASHES: dict[str, str] = {}


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

    def submit_all(self, verdicts: list[Ticket]) -> None:
        """submit() for a batch, in order, with one wake-up of the consumer."""
        ...


# ------------------------------------------------------------------------------------------------ tickets


@dataclass(slots=True, eq=False)
class Ticket(Verdict):
    """One frame from acquisition to publication: its verdict-to-be and where its pixels are. Pooled."""

    slot: int = -1  # ring slot; -1 = overload, never buffered
    height: int = 0  # the frame's own size: it lies at the slot's top-left, and may be smaller than the slot
    width: int = 0
    bad: str | None = None  # why the source says the frame cannot be inspected
    prepped: InputKey | None = None  # input_key of the recognizer input already made from this slot, if any


class TicketPool:
    """Tickets for frames in flight. `take` on the acquisition thread, `give_back` on the publisher thread
    (deque append/pop are atomic), so a frame costs no allocation once the pool holds as many tickets as frames
    were ever in flight at once."""

    def __init__(self, size: int):
        self._free: collections.deque[Ticket] = collections.deque(self._new() for _ in range(size))
        self.size = size

    @staticmethod
    def _new() -> Ticket:
        return Ticket(seq=-1, camera_frame_id=-1, result="reject", reason=Reason.ERROR, t_acquired_ns=0, t_decided_ns=0)

    def take(self) -> Ticket:
        try:
            return self._free.pop()
        except IndexError:
            self.size += 1  # more frames in flight than ever before: the pool grows once, for good
            return self._new()

    def give_back(self, verdict: Verdict) -> None:
        """The verdict was sent or dropped: its record may be reused. Verdicts made elsewhere are left alone."""
        if isinstance(verdict, Ticket):
            self._free.append(verdict)


# ----------------------------------------------------------------------------------------------- pipeline


def backlog_frames(deadline_ns: int, newest_age_ns: int, batch: int, batch_ns: int) -> int:
    """Frames that may wait: `batch` per predicted batch time that fits into BACKLOG_SHARE of the deadline, less
    the newest waiting frame's age (docs/RELIABILITY.md, Admission)."""
    return batch * max(0, (int(deadline_ns * BACKLOG_SHARE) - newest_age_ns) // batch_ns)


@dataclass
class PipelineCounters:
    acquired: int = 0
    decided: int = 0  # verdicts handed to the publisher (submitted or counted dropped by it)
    inspected: int = 0
    not_inspected: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    batched_frames: int = 0
    shed: int = 0  # rejected at admission (reason overload): predicted to miss the deadline, never inferred
    inferred: int = 0  # frames handed to the networks (inspected, or decided too late: timeout, or error)
    busy_ns: int = 0  # time the inference thread spent on admitted batches, admission to last verdict
    idle_ns: int = 0  # time it waited for frames with none queued
    resized_late: int = 0  # frames resized on the inference thread (not at acquisition: see _acquire_loop)


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
        self._slot_h, self._slot_w = cfg.height, cfg.width
        self.ring = FrameRing(ring_slots, *shape)
        # Where an overload frame is read to: it must leave the camera, but there is no slot to keep it in.
        self._scratch = np.zeros(shape, np.uint8)
        # The recognizer's resize runs in the acquisition thread, into one network-input row per slot: it then
        # overlaps with inference (OpenCV and ONNX Runtime both release the GIL) instead of adding to it. The
        # inference thread copies the row into the batch (input-sized, far smaller than the frame). A reload to
        # a recognizer with another input spec falls back to resizing in the inference thread (key mismatch).
        self._prep_key = input_key(runtime.recognizer.manifest)
        self._prep = Preprocessor.for_model(runtime.recognizer.manifest, ring_slots, cfg.pixel_format)
        # Frames in flight in ordinary running: the ring, overloads queued beside it, the batch being decided,
        # a publisher that keeps up. A publisher backlog (up to twice its queue: queued and being sent) or a
        # stalled inference grows the pool once, up to that many; it never shrinks, so a backlog costs no
        # allocation the next time either.
        self.tickets = TicketPool(2 * ring_slots + 2 * runtime.batch_size + 64)
        self.counters = PipelineCounters()
        self.fatal: str | None = None  # set when the source failed for good
        self.end_of_stream = False

        self._queue: collections.deque[Ticket] = collections.deque()
        # Of the queued tickets, those still to be inspected (a ring slot, not a bad frame), and the newest one's
        # acquisition time: the backlog admission weighs. A ring-full overload or a bad frame is decided already and
        # takes no inference time; counted, a burst of them would get the frames in the ring shed as backlog.
        self._to_inspect = 0
        self._newest_to_inspect_ns = 0
        self._cond = threading.Condition(threading.Lock())
        self._freed = Wakeup()  # a slot was released: a paced replay may read its next frame
        self._stop_acquiring = threading.Event()
        self._acquisition_done = False
        self._drain_deadline: float | None = None  # monotonic time after which queued frames get SHUTDOWN
        self._pending: Runtime | None = None
        self._swapped = threading.Condition(threading.Lock())
        self._retired: Runtime | None = None
        self.finished = threading.Event()
        self._freed_closed = False
        self._threads: list[threading.Thread] = []
        # Per cause of a logged fault: [monotonic time of its last log line, wall time of it, batches not logged
        # since, frames in them] (_log_error).
        self._error_log: dict[str, list[float]] = {}
        # Bad outputs and failed inference counted towards the engine's health (the daemon sets the listener).
        self.health = EngineHealth()
        self._overload_detail = f"all {ring_slots} ring slots were busy"
        # Admission control (_admit): a pessimistic running estimate of a batch's service time, seeded with the
        # warm-up measurement; a frame predicted to miss its deadline is rejected before the networks run.
        if runtime.capacity is None:
            runtime.capacity = measure(batch_work(runtime), runtime.batch_size, segment=segment_work(runtime))
        self.service = ServiceTime(runtime.capacity)
        # How many waiting frames admission last predicted it can decide within the deadline (never fewer than a
        # batch), and the detail of a frame shed on arrival for it: read without the lock by the acquisition thread.
        self._keep = 0
        self._arrival_detail = ""
        full_ns = max(1, int(self.service.predict_s(runtime.batch_size) * 1e9))
        self._set_keep(backlog_frames(runtime.deadline_ns, 0, runtime.batch_size, full_ns), runtime, full_ns)
        self._admitted_ns = 0  # when the batch being processed was admitted
        self._last_admit_ns = time.monotonic_ns()
        # Reused per batch (no per-batch list allocation on the hot path).
        self._items: list[Ticket] = []
        self._todo: list[Ticket] = []
        self._held: list[int] = []
        self._seg_rows: list[int] = []

    def recycle(self, verdict: Verdict) -> None:
        """The publisher is done with this verdict (sent or dropped): its ticket goes back to the pool."""
        self.tickets.give_back(verdict)

    # ------------------------------------------------------------------------------------------ control

    def start(self) -> None:
        self._last_admit_ns = time.monotonic_ns()
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
        done = not any(t.is_alive() for t in self._threads)
        if done and self._threads and not self._freed_closed:
            self._freed_closed = True
            self._freed.close()
        return done

    def swap(self, runtime: Runtime, timeout_s: float = 30.0) -> Runtime | None:
        """Hand a new runtime to the inference thread; returns the old one once it is out of use (None if the
        inference thread has ended, in which case the new runtime is simply adopted)."""
        with self._swapped:
            self._retired = None
            self._pending = runtime
            end = time.monotonic() + timeout_s
            while True:
                retired = self._take_retired()
                if retired is not None:
                    return retired
                if not self._threads[1].is_alive():
                    old, self.runtime, self._pending = self.runtime, runtime, None
                    return old
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the inference thread did not reach a batch boundary")
                self._swapped.wait(min(left, IDLE_WAIT_S))

    def _take_retired(self) -> Runtime | None:
        # Under self._swapped: the runtime the inference thread handed back (_adopt_pending), if it has.
        retired, self._retired = self._retired, None
        return retired

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
        ring, source, metrics, tickets = self.ring, self.source, self.metrics, self.tickets
        queue = self._queue
        perf = time.perf_counter
        seq = 0
        try:
            while not self._stop_acquiring.is_set():
                if self.max_frames is not None and seq >= self.max_frames:
                    break
                # No clear() before acquire(): a wake-up left over only costs one more turn of the loop, and
                # clearing is a system call per frame.
                if self.paced_by_pipeline and len(queue) >= self.runtime.batch_size:
                    # A replay keeps the next batch waiting, no more: a longer queue only adds latency, until
                    # admission sheds from it what a free-running camera would have made late.
                    self._freed.wait(IDLE_WAIT_S)
                    continue
                # Shed on arrival when as many frames wait as admission last said it can decide in time: this frame
                # would only push an older one out, so it takes no slot and no resize (docs/RELIABILITY.md).
                shed = not self.paced_by_pipeline and self._to_inspect >= self._keep
                slot = None if shed else ring.acquire()
                if slot is None and self.paced_by_pipeline:
                    self._freed.wait(IDLE_WAIT_S)  # backpressure: a replay waits for inference
                    continue
                out = self._scratch if slot is None else ring.view(slot)
                t0 = perf()
                grab = self._grab(source, out, slot)
                if grab is None:  # no frame within the timeout (or a camera reconnecting)
                    continue
                t = self._ticket(tickets.take(), seq, grab, slot)
                seq += 1
                metrics.acquired()
                metrics.stage("acquire", perf() - t0)
                if grab.camera_drops_before:
                    metrics.camera_drops(grab.camera_drops_before)
                self._hand_over(t, seq, shed)
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

    def _hand_over(self, t: Ticket, acquired: int, shed: bool) -> None:
        """A frame just acquired goes to the inference thread's queue: resized first when it has a slot.

        Every frame that has a slot arrived while fewer frames waited than admission can decide in time, so it
        will be inspected (unless a slower batch shrinks that number): its resize runs here, beside inference
        (OpenCV and ONNX Runtime both release the GIL), not on the inference core. A frame shed on arrival has
        no slot and costs no resize. (The first rule, "resize only while fewer than a batch wait", left every
        resize of an overloaded line to the inference thread: docs/RELIABILITY.md.)"""
        if t.slot >= 0 and t.bad is None:
            t1 = time.perf_counter()
            self._prep.put(t.slot, self._pixels(t))
            t.prepped = self._prep_key
            self.metrics.stage("preprocess", time.perf_counter() - t1)
        if shed:
            t.detail = self._arrival_detail
        with self._cond:
            self.counters.acquired = acquired
            if shed:
                self.counters.shed += 1
            self._enqueue(t)
            self._cond.notify()

    def _grab(self, source: Source, out: np.ndarray, slot: int | None) -> Grab | None:
        """source.grab() into `out`; the slot goes back to the ring if no frame came (or the source raised)."""
        try:
            grab = source.grab(out, GRAB_TIMEOUT_S)
        except BaseException:
            if slot is not None:
                self._release(slot)
            raise
        if grab is None and slot is not None:
            self._release(slot)
        return grab

    def _enqueue(self, t: Ticket) -> None:
        # Under self._cond.
        self._queue.append(t)
        if t.slot >= 0 and t.bad is None:
            self._to_inspect += 1
            self._newest_to_inspect_ns = t.t_acquired_mono_ns

    def _ticket(self, t: Ticket, seq: int, grab: Grab, slot: int | None) -> Ticket:
        """A pooled ticket for the frame just grabbed. Every field is set: nothing carries over from its last use."""
        t.seq = seq
        t.camera_frame_id = grab.camera_frame_id
        t.result = "reject"
        t.reason = Reason.ERROR  # overwritten when decided
        t.t_acquired_ns = time.time_ns()
        t.t_acquired_mono_ns = time.monotonic_ns()
        t.t_decided_ns = 0
        t.timestamp_source = grab.timestamp_source
        t.t_device_ns = grab.t_device_ns
        t.defects = NO_DEFECTS
        t.recognizer_score = None
        t.segmenter_ran = False
        t.camera_drops_before = grab.camera_drops_before
        t.detail = None
        t.config_hash = ""
        t.model_hashes = NO_HASHES
        t.truth = grab.truth
        t.source_name = grab.source_name  # the source's own string: nothing allocated per frame
        t.slot = -1 if slot is None else slot
        t.height = min(grab.height, self._slot_h)
        t.width = min(grab.width, self._slot_w)
        t.bad = grab.bad_frame
        t.prepped = None
        return t

    def _pixels(self, t: Ticket) -> np.ndarray:
        """The frame's pixels in its slot: the whole slot, or its top-left part for a smaller frame."""
        view = self.ring.view(t.slot)
        if t.height == self._slot_h and t.width == self._slot_w:
            return view
        pixels: np.ndarray = view[: t.height, : t.width]
        return pixels

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
                        t0 = time.monotonic_ns()
                        self._cond.wait(IDLE_WAIT_S)
                        self.counters.idle_ns += time.monotonic_ns() - t0
                        continue
                    self._admit(items)
                self._process(items)
                items.clear()
        finally:
            self._adopt_pending()
            self.finished.set()

    def _admit(self, items: list[Ticket]) -> None:
        """Under self._cond, queue not empty: take what is waiting, oldest first, into `items`: up to batch_size
        frames that are predicted to be decided within their deadline, and every older frame that is not, marked
        shed (reason OVERLOAD, detail set). Never waits to fill a batch. Policy and why: docs/RELIABILITY.md.

        Two predictions, both with the pessimistic batch time P(n) (capacity.ServiceTime):
        - the backlog: at most batch_size frames per P(batch_size) of BACKLOG_SHARE of the deadline (counted for
          the newest frame) are kept waiting, and never fewer than the largest batch that makes the deadline;
          frames beyond that are shed from the oldest end, so that newer ones do not wait behind frames that would
          take their time, and the inspected ones keep the rest of the deadline as a margin;
        - the head: a frame joining this batch is decided about P(n) from now; past its deadline, it is shed.
        Allocation: at most two detail strings per call, shared by the frames shed in it."""
        rt, queue, est = self.runtime, self._queue, self.service
        if rt.capacity is not None and rt.capacity is not est.capacity:
            est = self.service = ServiceTime(rt.capacity)  # a reload changed the models: their own measurement
        now = time.monotonic_ns()
        deadline, batch = rt.deadline_ns, rt.batch_size
        full_ns = max(1, int(est.predict_s(batch) * 1e9))
        newest_age = now - self._newest_to_inspect_ns if self._to_inspect else 0
        servable = backlog_frames(deadline, newest_age, batch, full_ns)
        if servable < batch:  # a deadline shorter than two batches: the largest batch that still makes it
            servable = self._fits(deadline - newest_age, batch)
        excess = self._to_inspect - servable
        if max(batch, servable) != self._keep:
            self._set_keep(servable, rt, full_ns)
        limit = min(batch, servable)
        probe = limit == 0 and now - self._last_admit_ns > PROBE_AFTER_NS
        if probe:
            limit = 1  # nothing fit for a while: one frame still in time goes through, so the estimate can learn
        batch_ns = int(est.predict_s(max(1, min(limit, self._to_inspect))) * 1e9)
        backlog_detail: str | None = None
        late_detail: str | None = None
        waiting = self._to_inspect
        n = 0
        while queue and n < max(limit, 1):  # limit 0: nothing fits, every frame waiting is shed
            t = queue.popleft()
            items.append(t)
            if t.slot < 0 or t.bad is not None:
                continue  # decided already (fail-safe): not part of the backlog
            self._to_inspect -= 1
            excess -= 1
            waited = now - t.t_acquired_mono_ns
            if excess >= 0 and not probe:
                if backlog_detail is None:
                    backlog_detail = (
                        f"shed at admission, oldest first: {waiting} frames were waiting and about "
                        f"{servable} can be decided within the {deadline / 1e6:g} ms deadline "
                        f"({batch} per {full_ns / 1e6:.0f} ms batch, predicted)"
                    )
                self._shed(t, backlog_detail)
            elif waited + (0 if probe else batch_ns) > deadline:
                if late_detail is None:
                    late_detail = (
                        f"shed at admission: predicted to be decided after its {deadline / 1e6:g} ms deadline "
                        f"(waited up to {waited / 1e6:.0f} ms, and a batch takes up to {batch_ns / 1e6:.0f} ms, "
                        "predicted)"
                    )
                self._shed(t, late_detail)
            else:
                n += 1
        if n:
            self._last_admit_ns = now
        self._admitted_ns = now

    def _set_keep(self, servable: int, rt: Runtime, full_ns: int) -> None:
        # One detail string per change of the figure, not one per frame shed on arrival.
        self._keep = keep = max(rt.batch_size, servable)
        self._arrival_detail = (
            f"shed at admission, on arrival: {keep} frames were waiting, as many as can be decided within the "
            f"{rt.deadline_ns / 1e6:g} ms deadline ({rt.batch_size} per {full_ns / 1e6:.0f} ms batch, predicted)"
        )

    def _fits(self, budget_ns: int, batch: int) -> int:
        """The largest batch predicted to be decided within budget_ns (0: not even one frame)."""
        for n in range(batch, 0, -1):
            if self.service.predict_s(n) * 1e9 <= budget_ns:
                return n
        return 0

    def _shed(self, t: Ticket, detail: str) -> None:
        t.reason = Reason.OVERLOAD  # until _process makes the fail-safe verdict: reason ERROR otherwise
        t.detail = detail
        self.counters.shed += 1

    def _process(self, items: list[Ticket]) -> None:
        rt = self.runtime
        now = time.monotonic_ns()
        shutting = self._drain_deadline is not None and time.monotonic() > self._drain_deadline
        todo = self._todo
        todo.clear()
        for t in items:
            if t.slot < 0:  # the ring was full, or shed on arrival (detail set then)
                self._failsafe(rt, t, Reason.OVERLOAD, t.detail or self._overload_detail)
            elif t.bad is not None:
                self._held.append(t.slot)
                self._failsafe(rt, t, Reason.BAD_FRAME, t.bad)
            elif t.reason is Reason.OVERLOAD:  # shed at admission
                self._held.append(t.slot)
                self._failsafe(rt, t, Reason.OVERLOAD, t.detail or "shed at admission")
            elif shutting:
                self._held.append(t.slot)
                self._failsafe(rt, t, Reason.SHUTDOWN, "in flight at shutdown, not inspected within the stop timeout")
            elif now - t.t_acquired_mono_ns > rt.deadline_ns:
                self._held.append(t.slot)
                waited = (now - t.t_acquired_mono_ns) / 1e6
                self._failsafe(rt, t, Reason.TIMEOUT, f"waited {waited:.0f} ms, deadline {rt.deadline_ns / 1e6:g} ms")
            else:
                todo.append(t)
        if todo:
            batches = self.counters.batches
            if not self.health.unhealthy:  # then _inspect rejects them without running the models
                self.counters.inferred += len(todo)
            self._inspect(rt, todo)  # it releases these frames' slots together with the batch's own
            done = time.monotonic_ns()
            self.counters.busy_ns += done - self._admitted_ns
            self._last_admit_ns = done  # the probe waits from the end of the last batch, not only its start
            if self.counters.batches != batches:  # decided (an error's time says nothing about the next batch)
                self.service.observe(len(todo), (done - self._admitted_ns) / 1e9)
        else:
            self._release_held()
        self.metrics.ring_occupancy(self.ring.in_use(), self.ring.slots)
        self.publisher.submit_all(items)
        with self._cond:
            self.counters.decided += len(items)

    def _inspect(self, rt: Runtime, todo: list[Ticket]) -> None:
        n = len(todo)
        metrics = self.metrics
        if self.health.unhealthy:
            self._reject_unhealthy(rt, todo)
            return
        try:
            self._prepare(rt, todo)
            t1 = time.perf_counter()
            block_scores = rt.recognizer.backend.run(n)["block_scores"]
            t2 = time.perf_counter()
            metrics.stage("recognizer", t2 - t1)
            # Scores that are not probabilities (NaN, Inf, outside [0, 1]) would pass the part: such frames are
            # bad_output rejects, and the segmenter never runs for them in gated mode.
            rec_bad = rt.decider.block_guard.check(block_scores)
            geometries = self._geometries(rt, todo)
            flagged, top = rt.decider.screen(block_scores, geometries)
            if rec_bad.any():
                flagged &= ~rec_bad
            rows = self._seg_rows
            rows.clear()
            pixel_scores = seg_bad = None
            if rt.segmenter is not None and rt.seg_pre is not None:
                pixel_scores = self._segment(rt, todo, flagged, rows)
                if pixel_scores is not None and rt.decider.pixel_guard is not None:
                    seg_bad = rt.decider.pixel_guard.check(pixel_scores)
                metrics.stage("segmenter", time.perf_counter() - t2)
            self._release_held()
            t3 = time.perf_counter()
            self._decide(rt, todo, block_scores, flagged, top, pixel_scores, rows, geometries, rec_bad, seg_bad)
            metrics.stage("decision", time.perf_counter() - t3)
            self.counters.batches += 1
            self.counters.batched_frames += n
        except Exception as exc:
            self._release_held()
            if rt.archive is not None:
                rt.archive.discard()
            text = f"{type(exc).__name__}: {exc}"
            self._log_error(
                f"error {type(exc).__name__}", "inference failed, %d frame(s) get error verdicts: %s", n, text
            )
            for t in todo:
                t.segmenter_ran = False
                t.defects = NO_DEFECTS
                self._failsafe(rt, t, Reason.ERROR, text[:500])
            if self.health.fault(rt.config.health, Reason.ERROR, n, text[:500]):
                for t in todo:  # the batch that made the engine unhealthy is already never a pass
                    t.result = "reject"

    def _reject_unhealthy(self, rt: Runtime, todo: list[Ticket]) -> None:
        """The engine is unhealthy (inspector.health): the frames are rejected without running the models."""
        alarm = self.health.alarm
        assert alarm is not None
        detail = f"{alarm.text()}; not inspected until the service restarts"
        for t in todo:
            self._held.append(t.slot)
            self._reject(rt, t, alarm.reason, detail)
        self._release_held()

    def _reject(self, rt: Runtime, v: Verdict, reason: Reason, detail: str) -> None:
        """A fail-safe verdict that is a reject whatever pipeline.failsafe_result says (bad_output, unhealthy)."""
        self._failsafe(rt, v, reason, detail)
        v.result = "reject"

    def _prepare(self, rt: Runtime, todo: list[Ticket]) -> None:
        """The batch's network inputs: the acquisition thread's rows copied in, or resized here after a reload
        to another input spec. Slots are released before inference unless the segmenter needs their pixels."""
        held, prep = self._held, self._prep.buffer
        rec_buf, rec_key = rt.rec_pre.buffer, rt.rec_key
        seg_pre, sink = rt.seg_pre, rt.archive
        # The segmenter's rows are written here only when it sees every frame and cannot copy them.
        seg_upfront = seg_pre is not None and rt.mode == "always" and not rt.seg_shares_input
        for i, t in enumerate(todo):
            held.append(t.slot)
            if sink is not None:  # a bounded copy, so that the slot can still be released before inference
                sink.stage(i, self.ring.view(t.slot))
            if t.prepped == rec_key:
                np.copyto(rec_buf[i], prep[t.slot])
            else:
                rt.rec_pre.put(i, self._pixels(t))
                self.counters.resized_late += 1
            if seg_upfront and seg_pre is not None:
                seg_pre.put(i, self._pixels(t))
        # Gated with a different input spec needs the pixels again after the recognizer; otherwise the slots
        # are free now, before inference, so acquisition can reuse them while the models run.
        if not (rt.mode == "gated" and not rt.seg_shares_input):
            self._release_held()

    def _segment(self, rt: Runtime, todo: list[Ticket], flagged: np.ndarray, rows: list[int]) -> np.ndarray | None:
        """Run the segmenter on every frame (always) or on the flagged ones (gated); `rows` gets their indices."""
        seg_pre, segmenter = rt.seg_pre, rt.segmenter
        assert seg_pre is not None and segmenter is not None
        n = len(todo)
        if rt.mode == "always":
            rows.extend(range(n))
        else:
            rows.extend(i for i in range(n) if flagged[i])
        if not rows:
            return None
        seg_in, rec_in = seg_pre.buffer, rt.rec_pre.buffer
        upfront = rt.mode == "always" and not rt.seg_shares_input
        for j, i in enumerate(rows):
            if rt.seg_shares_input:
                np.copyto(seg_in[j], rec_in[i])  # a small row copy instead of a resize
            elif not upfront:
                seg_pre.put(j, self._pixels(todo[i]))
        pixel_scores: np.ndarray = segmenter.backend.run(len(rows))["pixel_scores"]
        return pixel_scores

    def _decide(
        self,
        rt: Runtime,
        todo: list[Ticket],
        block_scores: np.ndarray,
        flagged: np.ndarray,
        top: np.ndarray,
        pixel_scores: np.ndarray | None,
        rows: list[int],
        geometries: list[Geometry] | None,
        rec_bad: np.ndarray,
        seg_bad: np.ndarray | None,
    ) -> None:
        decider, sink = rt.decider, rt.archive
        decided = time.time_ns()
        deadline_at = time.monotonic_ns() - rt.deadline_ns
        n_rows = len(rows)
        j = 0
        inspected = 0
        for i, t in enumerate(todo):
            pix = None
            # The guard that found this frame's output not to be probabilities, and that output.
            bad: tuple[OutputGuard | None, np.ndarray] | None = None
            if pixel_scores is not None and j < n_rows and rows[j] == i:
                pix = pixel_scores[j]
                t.segmenter_ran = True
                if seg_bad is not None and seg_bad[j] and not rec_bad[i]:
                    bad = (decider.pixel_guard, pix)
                j += 1
            if rec_bad[i]:
                bad = (decider.block_guard, block_scores[i])
            if bad is not None:
                self._bad_output(rt, t, bad[0], bad[1])
                if sink is not None:  # not kept; gives back what was staged for the frame
                    sink.offer(i, t, ("reject", Reason.BAD_OUTPUT, NO_DEFECTS, 0.0), block_scores[i], pix)
                continue
            if pix is not None:
                geometry = geometries[i] if geometries is not None else None
                result, reason, defects, score = decider.decide_screened(i, block_scores[i], pix, geometry)
            elif flagged[i]:
                geometry = geometries[i] if geometries is not None else None
                result, reason, defects, score = decider.decide_screened(i, block_scores[i], None, geometry)
            else:  # nothing fired: screen() already knows it is a pass, and its top score
                result, reason, defects, score = "pass", Reason.OK, NO_DEFECTS, float(top[i])
            if t.t_acquired_mono_ns < deadline_at:
                # Decided, but after the deadline: the part has gone past the reject gate, so the answer is a
                # timeout (fail-safe), with what the inspection found kept in the detail.
                self._failsafe(rt, t, Reason.TIMEOUT, f"decided after the deadline; inspection said {result}")
                t.recognizer_score = score
            else:
                t.result = result
                t.reason = reason
                t.defects = defects
                t.recognizer_score = score
                t.t_decided_ns = decided
                t.detail = None
                t.config_hash = rt.config_hash
                t.model_hashes = rt.model_hashes
                inspected += 1
            if sink is not None:  # returns at once: the scores join the staged copy, or a counted drop
                sink.offer(i, t, (result, reason, defects, score), block_scores[i], pix)
        self.counters.inspected += inspected

    def _bad_output(self, rt: Runtime, t: Ticket, guard: OutputGuard | None, scores: np.ndarray) -> None:
        """Frame t's output is not probabilities: a reject (never a pass), logged (rate-limited), counted towards
        the engine's health. Only frames with bad outputs come here: the words are made for them alone."""
        assert guard is not None
        detail = guard.describe(scores)
        t.defects = NO_DEFECTS
        self._reject(rt, t, Reason.BAD_OUTPUT, detail)
        self._log_error(f"bad_output {guard.role}", "bad network output, %d frame(s) rejected: %s", 1, detail)
        self.health.fault(rt.config.health, Reason.BAD_OUTPUT, 1, detail)

    def _geometries(self, rt: Runtime, todo: list[Ticket]) -> list[Geometry] | None:
        """None when every frame of the batch has the configured size (the rule); else each frame's geometry."""
        for t in todo:
            if t.height != self._slot_h or t.width != self._slot_w:
                return [rt.decider.geometry((x.height, x.width)) for x in todo]
        return None

    def _release_held(self) -> None:
        # One lock and one wake-up for the whole batch: waking another thread while holding the GIL can hand
        # the CPU to it (py-spy showed the inference thread spending a third of its GIL time in such wake-ups).
        if self._held:
            self.ring.release_all(self._held)
            self._held.clear()
            self._freed.set()

    def _failsafe(self, rt: Runtime, v: Verdict, reason: Reason, detail: str) -> None:
        # An unhealthy engine passes nothing, not even what failsafe_result: pass would let through.
        v.result = "reject" if self.health.unhealthy else rt.failsafe
        v.reason = reason
        v.detail = detail
        v.t_decided_ns = time.time_ns()
        v.recognizer_score = None
        v.config_hash, v.model_hashes = rt.config_hash, rt.model_hashes
        self.metrics.drop(reason.value)
        c = self.counters.not_inspected
        c[reason.value] = c.get(reason.value, 0) + 1

    def _log_error(self, cause: str, message: str, n: int, text: str) -> None:
        """Log a fault (`message` % (n, text)) at most once per ERROR_LOG_INTERVAL_S per `cause`; the line after
        a quiet interval says how many were not logged: "(and 312 more in 1248 frames since 14:03:12)"."""
        now = time.monotonic()
        entry = self._error_log.get(cause)
        if entry is None:
            entry = self._error_log[cause] = [-ERROR_LOG_INTERVAL_S, 0.0, 0, 0]
        if now - entry[0] < ERROR_LOG_INTERVAL_S:
            entry[2] += 1
            entry[3] += n
            return
        more = ""
        if entry[2]:
            since = time.strftime("%H:%M:%S", time.localtime(entry[1]))
            more = f" (and {entry[2]:.0f} more in {entry[3]:.0f} frames since {since})"
        log.error(message + "%s", n, text, more)
        entry[0], entry[1], entry[2], entry[3] = now, time.time(), 0, 0
