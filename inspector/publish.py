"""ZeroMQ output: the broadcast stream for monitors and the channel to the reject actuator / PLC gateway.

The wire format is specified in docs/PROTOCOL.md; `verdict_message` and `event_message` are its only writers.

Threading: one publisher thread creates, binds, uses and closes every socket (ZeroMQ sockets must not be shared
across threads). The pipeline hands verdicts over with `submit`, which never blocks: a bounded queue sits in
between, and a verdict that finds it full is counted as dropped on the way out. So, at any quiescent moment,

    frames acquired == publisher.published + publisher.dropped

Topics: verdicts go out as `LINE/CAMERA/verdict`, events as `LINE/CAMERA/event` (multipart [topic, JSON]).
Names cannot contain "/", so a subscription to `LINE/CAMERA/` matches that camera only (a bare `line1/cam1`
prefix would also match `line1/cam10`).

Actuator channel (docs/PROTOCOL.md, "Actuator channel"): a PUSH socket bound by the daemon, ZMQ_IMMEDIATE so that
messages are only queued to a gateway whose connection is complete, TCP heartbeats so that a gateway whose
cable is pulled is noticed within seconds, and a socket monitor that tracks connected receivers. A send that
finds no connected receiver, or the receiver's queue full (HWM), fails at once with EAGAIN and is counted as
undelivered; it never waits. A verdict older than publish.actuator_max_age_ms when its turn comes is not sent to
the actuator (counted stale; the broadcast still has it). A ZAP handler, answered by the publisher thread, lets
one receiver in at a time and, with publish.curve, only authorised CURVE keys on either socket.

Every verdict goes out: encoding cannot fail on what a model produces (non-finite floats are null), and if it
fails on anything else the minimal fail-safe verdict (`minimal_verdict`) is sent in its place.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Protocol, TextIO

import orjson
import zmq
import zmq.utils.z85
from zmq.utils.monitor import parse_monitor_message

from inspector.config import PublishConfig, SocketConfig
from inspector.curve import ClientKeys, ServerKeys
from inspector.frames import Reason, Verdict
from inspector.wakeup import Wakeup

log = logging.getLogger(__name__)

VERDICT_SCHEMA = "inspector.verdict/1"
EVENT_SCHEMA = "inspector.event/1"
DEFAULT_QUEUE_SIZE = 4096
# How often the publisher thread looks at the actuator monitor when no verdicts arrive.
_IDLE_POLL_S = 0.05
# A gateway that stops answering TCP-level ZMTP heartbeats is disconnected after this long.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
# Where libzmq asks whether a connection may complete its handshake (ZAP, RFC 27), and the domains of the sockets.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_BROADCAST, ZAP_ACTUATOR = b"broadcast", b"actuator"
# An actuator handshake the ZAP handler let through counts as a receiver until the monitor reports it (or this long).
_APPROVAL_TTL_S = 5.0
# At most one "actuator refused" event per this long (a refused client may retry many times a second).
_REFUSED_EVENT_EVERY_S = 10.0
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_SNDMORE, _NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)
_NOBLOCK_SNDMORE = _SNDMORE | _NOBLOCK


_iso_second: list[tuple[int, str]] = [(-1, "")]  # (second, its "YYYY-MM-DDTHH:MM:SS." text): the last one made


def iso_utc(ns: int) -> str:
    """ISO-8601 UTC with microseconds and a Z, e.g. 2025-01-31T12:00:00.123456Z (the ns field keeps the rest).

    Formatting a datetime costs ~7 us, twice per verdict; the date and time of day change once a second, so
    that part is made once per second and reused (one tuple swap: safe across threads).
    """
    sec, rem = divmod(ns, 1_000_000_000)
    cached_sec, prefix = _iso_second[0]
    if sec != cached_sec:
        prefix = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
        _iso_second[0] = (sec, prefix)
    return f"{prefix}{rem // 1000:06d}Z"


def split_topic(topic: str) -> tuple[str, str]:
    line, _, camera = topic.partition("/")
    return line, camera


def new_run_id() -> str:
    """A fresh identifier for one daemon process: a restart is visible as a new run id (seq restarts at 0)."""
    return uuid.uuid4().hex


def _wire_score(x: float | None) -> float | None:
    """A score as the wire carries it: 4 decimals, null when absent or not finite (NaN/Inf from a model)."""
    if x is None:
        return None
    f = float(x)
    return round(f, 4) if math.isfinite(f) else None


def verdict_message(verdict: Verdict, line: str = "", camera: str = "", run_id: str = "") -> dict[str, Any]:
    """The wire form of one verdict (schema inspector.verdict/1, docs/PROTOCOL.md)."""
    reason = verdict.reason.value
    return {
        "schema": VERDICT_SCHEMA,
        "line": line,
        "camera": camera,
        "run_id": run_id,
        "seq": verdict.seq,
        "camera_frame_id": verdict.camera_frame_id,
        "result": verdict.result,
        "reason": reason,
        "inspected": verdict.reason.inspected,
        "detail": verdict.detail,
        "acquired": iso_utc(verdict.t_acquired_ns),
        "acquired_ns": verdict.t_acquired_ns,
        "decided": iso_utc(verdict.t_decided_ns),
        "decided_ns": verdict.t_decided_ns,
        "timestamp_source": verdict.timestamp_source,
        "device_timestamp_ns": verdict.t_device_ns,
        "defects": [d.to_wire() for d in verdict.defects],
        "recognizer_score": _wire_score(verdict.recognizer_score),
        "segmenter_ran": verdict.segmenter_ran,
        "camera_drops_before": verdict.camera_drops_before,
        "config_hash": verdict.config_hash,
        "model_hashes": dict(verdict.model_hashes),
        "source_name": verdict.source_name,
    }


def event_message(
    kind: str, line: str = "", camera: str = "", t_ns: int | None = None, run_id: str = "", **fields: Any
) -> dict[str, Any]:
    """The wire form of one event (schema inspector.event/1): start, stop, reload, camera state, ..."""
    t = time.time_ns() if t_ns is None else t_ns
    msg = {
        "schema": EVENT_SCHEMA,
        "line": line,
        "camera": camera,
        "run_id": run_id,
        "kind": kind,
        "time": iso_utc(t),
        "time_ns": t,
    }
    for key, value in fields.items():
        if key in msg:
            raise ValueError(f"event field {key!r} clashes with the envelope")
        msg[key] = value
    return msg


def _wire_default(obj: Any) -> Any:
    """What orjson cannot encode by itself: numpy scalars (a model's float32 score) as Python numbers, enums as
    their value. Anything else is a bug upstream: TypeError, and the caller sends the minimal verdict instead."""
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"{type(obj).__name__} is not a wire type")


_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _encode(msg: dict[str, Any]) -> bytes:
    # orjson: compact UTF-8 JSON in one C call, ~10x the standard library's speed on a verdict (README,
    # "Dependencies"). Non-finite floats (Python or numpy) become null, which the schema allows for every float
    # field: a NaN score from a broken model never makes a verdict unsendable.
    return orjson.dumps(msg, default=_wire_default, option=_ORJSON_OPTIONS)


def _int_field(obj: Any, name: str) -> int | None:
    """obj.name as a 64-bit int, or None whatever goes wrong (for the minimal verdict)."""
    try:
        i = int(getattr(obj, name))
    except Exception:
        return None
    return i if -(2**63) <= i < 2**63 else None


def _safe_iso(ns: int | None) -> str | None:
    try:
        return None if ns is None else iso_utc(ns)
    except Exception:  # a timestamp outside datetime's range
        return None


def minimal_verdict(verdict: Any, line: str, camera: str, run_id: str, result: str, why: str) -> tuple[Verdict, bytes]:
    """The fail-safe verdict for a frame whose full verdict could not be encoded (docs/PROTOCOL.md, "Minimal
    verdict"): envelope, seq, camera_frame_id, the fail-safe result, reason error, not inspected, and why.

    Built from as little of the original as possible, each piece converted defensively, so that it cannot fail
    for the reasons the full message did. Returns the record (for metrics) and its encoded form."""
    now = time.time_ns()
    seq = _int_field(verdict, "seq")
    frame_id = _int_field(verdict, "camera_frame_id")
    acquired = _int_field(verdict, "t_acquired_ns")
    mono = _int_field(verdict, "t_acquired_mono_ns") or 0
    result = "pass" if result == "pass" else "reject"
    detail = f"verdict could not be encoded: {why}"[:500]
    record = Verdict(
        seq=-1 if seq is None else seq,
        camera_frame_id=-1 if frame_id is None else frame_id,
        result=result,  # type: ignore[arg-type]  # checked just above
        reason=Reason.ERROR,
        t_acquired_ns=now if acquired is None else acquired,
        t_decided_ns=now,
        detail=detail,
        t_acquired_mono_ns=mono,
    )
    msg = {
        "schema": VERDICT_SCHEMA,
        "line": str(line),
        "camera": str(camera),
        "run_id": str(run_id),
        "seq": seq,
        "camera_frame_id": frame_id,
        "result": result,
        "reason": Reason.ERROR.value,
        "inspected": False,
        "detail": detail,
        "acquired": _safe_iso(acquired),
        "acquired_ns": acquired,
        "decided": iso_utc(now),
        "decided_ns": now,
    }
    return record, json.dumps(msg, ensure_ascii=True, allow_nan=False).encode()


class _RateLimitedLog:
    """At most one log line per `every_s` for one kind of trouble, saying how many happened since the last."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self._last = -math.inf
        self._suppressed = 0

    def __call__(self, level: int, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._suppressed += 1
            return
        more = (
            f" (and {self._suppressed} more like it in the last {now - self._last:.0f} s)" if self._suppressed else ""
        )
        self._last, self._suppressed = now, 0
        log.log(level, fmt + "%s", *args, more)


Socket = zmq.Socket[bytes]  # every socket here sends and receives bytes frames
Context = zmq.Context[Socket]


class PublisherMetrics(Protocol):
    """What the publisher reports (`inspector.console.MetricsTap` around `inspector.metrics.Metrics`)."""

    def verdict_published(self, v: Verdict, latency_s: float) -> None: ...
    def verdict_dropped(self, cause: str) -> None: ...
    def stage(self, name: str, seconds: float) -> None: ...
    def actuator_connected(self, connected: bool | int) -> None: ...
    def actuator_undelivered(self, cause: str) -> None: ...
    def actuator_refused(self, cause: str) -> None: ...
    def verdict_encode_failed(self) -> None: ...


@dataclass(slots=True)
class _QueuedEvent:
    kind: str
    t_ns: int
    fields: dict[str, Any]


class PublisherError(RuntimeError):
    """The publisher could not start (e.g. an endpoint cannot be bound)."""


class Publisher:
    """Publishes verdicts and events from its own thread. See the module docstring for the contract.

    If `metrics` is given, the publisher reports `verdict_published` (with acquisition-to-publish latency),
    `verdict_dropped`, `stage("publish")`, `actuator_connected` and `actuator_undelivered` itself.
    """

    def __init__(
        self,
        cfg: PublishConfig,
        topic: str,
        metrics: PublisherMetrics | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        failsafe_result: str = "reject",
        curve: ServerKeys | None = None,
    ):
        self.cfg = cfg
        self.curve = curve  # CURVE keys (publish.curve, read by the caller): both sockets encrypted, clients checked
        # The result of the minimal verdict sent for a frame whose verdict could not be encoded (pipeline's
        # failsafe_result; the daemon updates it on reload: a plain attribute, read once per such verdict).
        self.failsafe_result = failsafe_result
        self._max_age_ns = None if cfg.actuator_max_age_ms is None else int(cfg.actuator_max_age_ms * 1e6)
        self.topic = topic
        self.line, self.camera = split_topic(topic)
        # One per publisher, i.e. per daemon process (a reload keeps its publisher): see docs/PROTOCOL.md.
        self.run_id = new_run_id()
        self._verdict_topic = f"{topic}/verdict".encode()
        self._event_topic = f"{topic}/event".encode()
        self.metrics = metrics
        self.queue_size = queue_size
        # Verdicts and events share one queue so a subscriber sees them in the order they happened.
        # Verdicts go in as they are (no wrapper per frame); the rare events as _QueuedEvent records.
        self._queue: collections.deque[Verdict | _QueuedEvent] = collections.deque()
        self._queued_verdicts = 0
        self._lock = threading.Lock()  # guards the queue and the closing state
        self._wakeup = Wakeup()  # the publisher thread sleeps on it; set outside the lock, GIL released
        self._closing = False
        self._closed = False
        self._deadline = 0.0  # monotonic time by which close() gives up draining
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stats_lock = threading.Lock()
        self.published = 0  # verdicts handed to the broadcast socket
        self.dropped = 0  # verdicts that never reached it
        self.events_published = 0
        self.actuator_sent = 0  # verdicts handed to a connected actuator receiver
        self.actuator_undelivered = 0  # verdicts no actuator receiver could take
        self.actuator_stale = 0  # verdicts too old for the actuator (publish.actuator_max_age_ms): not sent
        self.encode_failed = 0  # verdicts sent as the minimal fail-safe verdict: the full one could not be encoded
        self._encode_log = _RateLimitedLog()
        self._stale_log = _RateLimitedLog()
        self.actuator_peers = 0  # receivers connected right now
        self._last_seq: int | None = None  # publisher thread: seq of the last verdict published (in every event)
        # Publisher thread only: actuator connections accepted and not yet closed (fds), receivers past their
        # handshake, and whether the last monitor event was a failed handshake (see _poll_monitor).
        self._pending_fds: set[int] = set()
        self._connected = 0
        self._handshake_failed = False
        self._approvals: list[float] = []  # monotonic times of actuator handshakes let through, not yet connected
        self.actuator_refused = 0  # actuator handshakes refused (a second receiver, or an unauthorised key)
        self._refused_since_event = 0
        self._refused_event_at = -math.inf
        self._zap_log = _RateLimitedLog()
        self._peers_changed = threading.Condition(threading.Lock())
        # Called (publisher thread) with each verdict once it is sent or dropped: from then on its record may be
        # reused (the pipeline's ticket pool). None: verdicts are left to the garbage collector.
        self.recycle: Callable[[Verdict], None] | None = None
        self.broadcast_endpoint: str | None = None  # actual endpoints after bind (tcp://...:0 resolves the port)
        self.actuator_endpoint: str | None = None

    # ------------------------------------------------------------------------------------ pipeline side

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the publisher thread; returns once its sockets are bound, raises PublisherError if they cannot be."""
        if self._thread is not None:
            raise RuntimeError("publisher already started")
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise PublisherError(f"publisher did not start within {timeout_s} s")
        if self._start_error is not None:
            self._thread.join(timeout_s)
            raise PublisherError(str(self._start_error)) from self._start_error

    def submit(self, verdict: Verdict) -> bool:
        """Queue one verdict for publishing. Never blocks; returns False (and counts a drop) if it cannot be queued."""
        with self._lock:
            if self._closing:
                cause = "closed"
            elif self._queued_verdicts >= self.queue_size:
                cause = "queue_full"
            else:
                self._queue.append(verdict)
                self._queued_verdicts += 1
                cause = ""
        if not cause:
            self._wakeup.set()
            return True
        self._count_drop(cause)
        if self.recycle is not None:
            self.recycle(verdict)
        return False

    def submit_all(self, verdicts: Sequence[Verdict]) -> None:
        """submit() for several verdicts, in order, under one lock and with one wake-up of the publisher thread
        (waking a thread is what costs, not queueing)."""
        with self._lock:
            fits = not self._closing and self._queued_verdicts + len(verdicts) <= self.queue_size
            if fits:
                self._queue.extend(verdicts)
                self._queued_verdicts += len(verdicts)
        if fits:
            self._wakeup.set()
        else:  # closing, or the queue is (nearly) full: verdict by verdict, each counted
            for verdict in verdicts:
                self.submit(verdict)

    def event(self, kind: str, **fields: Any) -> None:
        """Publish a non-verdict event on the broadcast stream, in order with the verdicts. Never blocks.

        Events are rare (start, stop, reload, camera lost/found), so they are not bounded by the verdict queue.
        """
        t_ns = time.time_ns()
        with self._lock:
            if self._closing:
                log.warning("event %r after close: not published", kind)
                return
            self._queue.append(_QueuedEvent(kind, t_ns, fields))
        self._wakeup.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish what is queued (up to timeout_s), then close the sockets with their LINGER.

        Verdicts still queued when the timeout expires are counted as dropped (cause "closed")."""
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout_s
        self._wakeup.set()
        if self._thread is not None:
            # LINGER may keep the thread in zmq close for up to linger_ms after draining.
            linger_s = max(self.cfg.broadcast.linger_ms, self.cfg.actuator.linger_ms if self.cfg.actuator else 0) / 1000
            self._thread.join(timeout_s + linger_s + 2.0)
            if self._thread.is_alive():
                log.error("publisher thread did not stop within %.1f s", timeout_s + linger_s + 2.0)
        with self._lock:
            self._closed = True
            leftover = [item for item in self._queue if not isinstance(item, _QueuedEvent)]
            self._queue.clear()
            self._queued_verdicts = 0
        if self._thread is None or not self._thread.is_alive():
            self._wakeup.close()
        for verdict in leftover:
            self._count_drop("closed")
            if self.recycle is not None:
                self.recycle(verdict)

    def wait_actuator_peers(self, n: int, timeout_s: float) -> bool:
        """Wait until exactly n actuator receivers are connected (for start-up checks and tests)."""
        deadline = time.monotonic() + timeout_s
        with self._peers_changed:
            while self.actuator_peers != n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._peers_changed.wait(left)
            return True

    @property
    def actuator_connected(self) -> bool:
        return self.actuator_peers > 0

    def _count_drop(self, cause: str) -> None:
        with self._stats_lock:
            self.dropped += 1
        if self.metrics is not None:
            self.metrics.verdict_dropped(cause)

    # ------------------------------------------------------------------------------------ publisher thread

    def _socket(self, ctx: Context, kind: int, sc: SocketConfig) -> Socket:
        sock: Socket = ctx.socket(kind)
        sock.setsockopt(zmq.SNDHWM, sc.sndhwm)
        sock.setsockopt(zmq.LINGER, sc.linger_ms)
        return sock

    def _bind(self, sock: Socket, endpoint: str, what: str) -> str:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise PublisherError(f"cannot bind the {what} socket to {endpoint}: {exc.strerror}") from exc
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _run(self) -> None:
        ctx = zmq.Context()
        sockets: list[Socket] = []
        monitor: Socket | None = None
        zap: Socket | None = None
        try:
            try:
                # The ZAP handler first: libzmq consults it for every handshake on a socket with a ZAP domain (the
                # actuator always: one receiver only; both with CURVE: authorised keys only). This thread
                # answers it, between batches.
                if self.cfg.actuator is not None or self.curve is not None:
                    zap = ctx.socket(zmq.REP)
                    sockets.append(zap)
                    zap.setsockopt(zmq.LINGER, 0)
                    zap.bind(ZAP_ENDPOINT)
                pub = self._socket(ctx, zmq.PUB, self.cfg.broadcast)
                sockets.append(pub)
                if self.curve is not None:
                    self.curve.apply(pub, ZAP_BROADCAST.decode())
                self.broadcast_endpoint = self._bind(pub, self.cfg.broadcast.bind, "broadcast")
                act: Socket | None = None
                if self.cfg.actuator is not None:
                    act = self._socket(ctx, zmq.PUSH, self.cfg.actuator)
                    sockets.append(act)
                    act.setsockopt(zmq.IMMEDIATE, 1)
                    act.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
                    act.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
                    if self.curve is not None:
                        self.curve.apply(act, ZAP_ACTUATOR.decode())
                    else:
                        act.setsockopt(zmq.ZAP_DOMAIN, ZAP_ACTUATOR)  # NULL mechanism, still asks the handler
                    monitor = act.get_monitor_socket(
                        zmq.EVENT_ACCEPTED
                        | zmq.EVENT_HANDSHAKE_SUCCEEDED
                        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                        | zmq.EVENT_DISCONNECTED
                    )
                    self.actuator_endpoint = self._bind(act, self.cfg.actuator.bind, "actuator")
                    if self.metrics is not None:
                        self.metrics.actuator_connected(0)
            except BaseException as exc:
                self._start_error = exc
                return
            finally:
                self._started.set()
            self._loop(pub, act, monitor, zap)
        finally:
            if monitor is not None:
                monitor.close(linger=0)
            for sock in sockets:
                sock.close()  # with the configured LINGER
            ctx.term()

    def _loop(self, pub: Socket, act: Socket | None, monitor: Socket | None, zap: Socket | None) -> None:
        batch: list[Verdict | _QueuedEvent] = []
        heartbeat_s = self.cfg.heartbeat_ms / 1000
        next_heartbeat = time.monotonic() + heartbeat_s
        while True:
            with self._lock:
                idle = not self._queue and not self._closing
            if idle:
                self._wakeup.wait(_IDLE_POLL_S)
            with self._lock:
                closing = self._closing
                past_deadline = closing and time.monotonic() > self._deadline
                if not past_deadline:
                    batch.extend(self._queue)
                    self._queue.clear()
                    self._queued_verdicts = 0
            if monitor is not None:
                self._poll_monitor(monitor)
            if zap is not None:
                self._serve_zap(zap)
            for item in batch:
                if isinstance(item, _QueuedEvent):
                    self._publish_event(pub, item.kind, item.t_ns, item.fields)
                else:
                    self._publish_verdict(pub, act, item)
                    if self.recycle is not None:
                        self.recycle(item)
            batch.clear()
            # From this thread, after the queue: a heartbeat proves the publisher itself is alive, and the
            # last_seq it carries is never ahead of the verdicts already handed to the sockets.
            if heartbeat_s > 0 and not closing and time.monotonic() >= next_heartbeat:
                next_heartbeat = max(next_heartbeat + heartbeat_s, time.monotonic())
                self._publish_event(pub, "heartbeat", time.time_ns(), {})
            if closing:
                with self._lock:
                    if not self._queue or time.monotonic() > self._deadline:
                        return

    def _publish_verdict(self, pub: Socket, act: Socket | None, verdict: Verdict) -> None:
        t0 = time.perf_counter()
        try:
            payload = _encode(verdict_message(verdict, self.line, self.camera, self.run_id))
        except Exception as exc:  # whatever it is, the frame still gets a verdict: the minimal fail-safe one
            verdict, payload = self._minimal(verdict, exc)
        # PUB never blocks: a subscriber at its HWM loses the message, which it sees as a gap in seq.
        # Two plain sends with int flags: pyzmq's send_multipart computes its flags with enum.Flag operators,
        # which cost three times the send itself. A multipart message is still atomic (all parts or none).
        pub.send(self._verdict_topic, _SNDMORE)
        pub.send(payload)
        now_mono = time.monotonic_ns()
        if act is not None:
            self._send_actuator(act, verdict, payload, now_mono)
        self._last_seq = verdict.seq
        with self._stats_lock:
            self.published += 1
        if self.metrics is not None:
            self.metrics.stage("publish", time.perf_counter() - t0)
            latency_s = (now_mono - verdict.t_acquired_mono_ns) / 1e9 if verdict.t_acquired_mono_ns else 0.0
            self.metrics.verdict_published(verdict, latency_s)

    def _send_actuator(self, act: Socket, verdict: Verdict, payload: bytes, now_mono: int) -> None:
        # A verdict older than actuator_max_age_ms is for a part already past the ejector: not sent (a burst of
        # those after a stall would be acted on as if current), counted, still on the broadcast stream.
        if self._max_age_ns is not None:
            if verdict.t_acquired_mono_ns:
                age_ns = now_mono - verdict.t_acquired_mono_ns
            else:  # no monotonic stamp (a source without one): the wall clocks, as the gateway compares them
                age_ns = time.time_ns() - verdict.t_acquired_ns
            if age_ns > self._max_age_ns:
                self.actuator_stale += 1
                if self.metrics is not None:
                    self.metrics.actuator_undelivered("stale")
                self._stale_log(
                    logging.WARNING,
                    "verdict seq=%s not sent to the actuator: %.0f ms old, publish.actuator_max_age_ms is %g",
                    verdict.seq,
                    age_ns / 1e6,
                    self._max_age_ns / 1e6,
                )
                return
        try:
            act.send(self._verdict_topic, _NOBLOCK_SNDMORE)
            act.send(payload, _NOBLOCK)
            self.actuator_sent += 1
        except zmq.Again:
            self.actuator_undelivered += 1
            if self.metrics is not None:
                self.metrics.actuator_undelivered("no_receiver" if not self._connected else "queue_full")

    def _minimal(self, verdict: Verdict, exc: BaseException) -> tuple[Verdict, bytes]:
        """The minimal fail-safe verdict for one that could not be encoded; counted, logged (rate-limited)."""
        try:
            why = f"{type(exc).__name__}: {exc}"
        except Exception:  # an exception whose str() fails
            why = type(exc).__name__
        self.encode_failed += 1
        if self.metrics is not None:
            self.metrics.verdict_encode_failed()
        self._encode_log(
            logging.ERROR,
            "verdict seq=%s could not be encoded (%s): the minimal fail-safe verdict (%s, reason error) went out "
            "instead",
            getattr(verdict, "seq", "?"),
            why,
            self.failsafe_result,
        )
        return minimal_verdict(verdict, self.line, self.camera, self.run_id, self.failsafe_result, why)

    def _publish_event(self, pub: Socket, kind: str, t_ns: int, fields: dict[str, Any]) -> None:
        # Every event says which verdict it follows; heartbeat and stop also say how the actuator fared, so a
        # gateway can tell a lost last verdict (the next verdict, which would show the gap, may never come).
        fields = {**fields, "last_seq": self._last_seq}
        if kind in ("heartbeat", "stop"):
            fields["published"] = self.published
            if self.cfg.actuator is not None:
                fields["actuator_sent"] = self.actuator_sent
                fields["actuator_undelivered"] = self.actuator_undelivered
                fields["actuator_stale"] = self.actuator_stale
        try:
            payload = _encode(event_message(kind, self.line, self.camera, t_ns=t_ns, run_id=self.run_id, **fields))
        except (TypeError, ValueError) as exc:
            log.error("event %r cannot be encoded: %s", kind, exc)
            return
        pub.send(self._event_topic, _SNDMORE)
        pub.send(payload)
        self.events_published += 1

    def _poll_monitor(self, monitor: Socket) -> None:
        # A receiver counts once its ZMTP handshake succeeded (ZMQ_IMMEDIATE queues nothing to it before) and
        # until its connection drops. A TCP connection that never completes a handshake (a port scanner, a wrong
        # socket type, a client ZAP refused) never counts. libzmq (4.3) says which connection (its fd) on
        # ACCEPTED and DISCONNECTED only: HANDSHAKE_SUCCEEDED carries 0. But a connection whose handshake fails
        # reports HANDSHAKE_FAILED_* immediately followed by its DISCONNECTED (one engine, one I/O thread), so
        # a DISCONNECTED of an accepted connection without that just before it is one that had succeeded.
        before = self._connected
        while True:
            try:
                frames = monitor.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            ev = parse_monitor_message(frames)
            event, fd = ev["event"], int(ev["value"])
            if event == zmq.EVENT_ACCEPTED:
                self._pending_fds.add(fd)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected += 1
                if self._approvals:
                    self._approvals.pop(0)
                log.info("actuator receiver connected (%d connected)", self._connected)
            elif event & _HANDSHAKE_FAILED:
                self._handshake_failed = True  # the next DISCONNECTED is that connection's
            elif event == zmq.EVENT_DISCONNECTED and fd in self._pending_fds:
                self._pending_fds.discard(fd)
                if self._handshake_failed:
                    self._handshake_failed = False
                elif self._connected > 0:
                    self._connected -= 1
                    log.warning("actuator receiver disconnected (%d connected)", self._connected)
        if self._connected != before:
            self._report_peers(before)

    def _report_peers(self, before: int) -> None:
        self.actuator_peers = self._connected
        if self.metrics is not None:
            self.metrics.actuator_connected(self.actuator_peers)
        state = "connected" if self.actuator_peers > before else "disconnected"
        if self.actuator_peers > 1:
            # The ZAP handler admits one receiver at a time; should two ever get through, say so loudly: PUSH
            # would deal the verdicts between them.
            state = "several_receivers"
            log.error("%d receivers on the actuator channel: each gets only some verdicts", self.actuator_peers)
        self._own_event("actuator", state=state, receivers=self.actuator_peers)
        with self._peers_changed:
            self._peers_changed.notify_all()

    def _own_event(self, kind: str, **fields: Any) -> None:
        """An event the publisher thread raises itself; none once closing (the stop event is the last)."""
        if not self._closing:
            self.event(kind, **fields)

    def _serve_zap(self, zap: Socket) -> None:
        """Answer libzmq's handshake questions (ZAP, RFC 27): a reply per request, in this thread."""
        while True:
            try:
                frames = zap.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 6:  # not a ZAP request; REP must still answer
                zap.send_multipart([b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"bad request", b"", b""])
                continue
            version, request_id, domain, address, _routing_id, mechanism = frames[:6]
            refusal = self._authorise(domain, mechanism, frames[6:])
            if refusal is None:
                zap.send_multipart([version, request_id, b"200", b"OK", b"", b""])
            else:
                zap.send_multipart([version, request_id, b"400", refusal.encode(), b"", b""])
                self._refused(domain, address.decode(errors="replace"), refusal)

    def _authorise(self, domain: bytes, mechanism: bytes, credentials: list[bytes]) -> str | None:
        """None to let a handshake complete, else why not (unauthorised, second_receiver)."""
        if self.curve is not None:
            key = credentials[0] if mechanism == b"CURVE" and credentials and len(credentials[0]) == 32 else None
            if key is None or zmq.utils.z85.encode(key) not in self.curve.authorised:
                return "unauthorised"
        if domain == ZAP_ACTUATOR:
            now = time.monotonic()
            self._approvals = [t for t in self._approvals if now - t < _APPROVAL_TTL_S]
            if self._connected or self._approvals:
                return "second_receiver"
            self._approvals.append(now)
        return None

    def _refused(self, domain: bytes, address: str, cause: str) -> None:
        which = domain.decode(errors="replace")
        self._zap_log(logging.WARNING, "%s: refused a connection from %s: %s", which, address, cause)
        if domain != ZAP_ACTUATOR:
            return
        self.actuator_refused += 1
        if self.metrics is not None:
            self.metrics.actuator_refused(cause)
        self._refused_since_event += 1
        now = time.monotonic()
        if now - self._refused_event_at >= _REFUSED_EVENT_EVERY_S:
            self._own_event(
                "actuator",
                state="refused",
                cause=cause,
                address=address,
                refused=self._refused_since_event,
                receivers=self.actuator_peers,
            )
            self._refused_event_at, self._refused_since_event = now, 0


# ---------------------------------------------------------------------------------------------- listen


def format_verdict_line(msg: dict[str, Any]) -> str:
    """One readable line per verdict, for `inspector listen` without --json."""
    defects = msg.get("defects") or []
    parts = [
        msg.get("decided", "?"),
        f"{msg.get('line')}/{msg.get('camera')}",
        f"seq={msg.get('seq')}",
        f"frame={msg.get('camera_frame_id')}",
        f"{str(msg.get('result', '?')).upper():6}",
        f"reason={msg.get('reason')}",
    ]
    score = msg.get("recognizer_score")
    if score is not None:
        parts.append(f"score={score:.3f}")
    latency_ns = (msg.get("decided_ns") or 0) - (msg.get("acquired_ns") or 0)
    parts.append(f"decided_in={latency_ns / 1e6:.1f}ms")
    if defects:
        shown = ", ".join(f"{d['class']} {d['area_px']}px@{d['bbox'][0]},{d['bbox'][1]}" for d in defects[:4])
        more = f" (+{len(defects) - 4})" if len(defects) > 4 else ""
        parts.append(f"defects=[{shown}{more}]")
    if msg.get("camera_drops_before"):
        parts.append(f"camera_drops={msg['camera_drops_before']}")
    if msg.get("detail"):
        parts.append(f"detail={msg['detail']!r}")
    return " ".join(parts)


def _report_gap(last: dict[str, tuple[Any, int]], cam_topic: str, run_id: Any, seq: Any) -> None:
    """A verdict's run_id and seq after the previous one of its camera (stderr): a new run_id is a restart of the
    daemon (seq starts again: not a loss); within one run, a jump in seq means verdicts lost on the way."""
    if not isinstance(seq, int):
        return
    prev = last.get(cam_topic)
    if prev is not None:
        prev_run, prev_seq = prev
        if run_id != prev_run:
            print(
                f"listen: {cam_topic}: the daemon restarted (run_id {prev_run} -> {run_id}); seq starts again at "
                f"{seq} (last seen of the old run: {prev_seq})",
                file=sys.stderr,
            )
        elif seq > prev_seq + 1:
            print(f"listen: {cam_topic}: {seq - prev_seq - 1} verdicts missed before seq {seq}", file=sys.stderr)
    last[cam_topic] = (run_id, seq)


def listen(
    endpoint: str,
    topic: str,
    count: int | None,
    as_json: bool,
    out: TextIO = sys.stdout,
    timeout_s: float | None = None,
    events: bool = False,
    curve: ClientKeys | None = None,
) -> int:
    """Subscribe to `endpoint` and print verdicts of `topic` (LINE/CAMERA; "" = every camera) to `out`.

    Stops after `count` verdicts (None = forever), or when nothing arrived for `timeout_s`. Returns the number
    of verdicts printed. Sequence gaps (verdicts lost on the way, e.g. to a slow terminal) and daemon restarts (a
    new run_id) are reported on stderr.
    """
    sub, monitor = _listen_socket(endpoint, topic.rstrip("/"), events, curve)
    printed = 0
    last_seq: dict[str, tuple[Any, int]] = {}
    poll_ms = None if timeout_s is None else int(timeout_s * 1000)
    try:
        while count is None or printed < count:
            if not _await_message(sub, monitor, poll_ms, endpoint):
                break
            frames = sub.recv_multipart()
            if len(frames) != 2:
                print(f"listen: ignoring a message of {len(frames)} parts", file=sys.stderr)
                continue
            msg_topic = frames[0].decode(errors="replace")
            try:
                msg = json.loads(frames[1])
            except ValueError:
                print(f"listen: ignoring a message on {msg_topic!r} that is not JSON", file=sys.stderr)
                continue
            schema = msg.get("schema", "")
            if schema.startswith("inspector.event/"):
                if events:
                    out.write(json.dumps(msg) if as_json else f"{msg.get('time')} {msg_topic} {msg.get('kind')}")
                    out.write("\n")
                    out.flush()
                continue
            if not schema.startswith("inspector.verdict/"):
                print(f"listen: ignoring a message with schema {schema!r}", file=sys.stderr)
                continue
            _report_gap(last_seq, msg_topic.rsplit("/", 1)[0], msg.get("run_id"), msg.get("seq"))
            out.write(json.dumps(msg, separators=(",", ":")) if as_json else format_verdict_line(msg))
            out.write("\n")
            out.flush()
            printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        if monitor is not None:
            sub.disable_monitor()
            monitor.close(linger=0)
        sub.close()
    return printed


def _listen_socket(endpoint: str, prefix: str, events: bool, curve: ClientKeys | None) -> tuple[Socket, Socket | None]:
    ctx: Context = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    if curve is not None:
        curve.apply(sub)
    if prefix:
        sub.setsockopt_string(zmq.SUBSCRIBE, f"{prefix}/verdict")
        if events:
            sub.setsockopt_string(zmq.SUBSCRIBE, f"{prefix}/event")
    else:
        sub.setsockopt_string(zmq.SUBSCRIBE, "")
    # With CURVE, a refused key is otherwise silence: libzmq does not retry a refused handshake, so say it.
    monitor = sub.get_monitor_socket(_HANDSHAKE_FAILED) if curve is not None else None
    sub.connect(endpoint)
    return sub, monitor


def _await_message(sub: Socket, monitor: Socket | None, timeout_ms: int | None, endpoint: str) -> bool:
    """Wait for a message on `sub`: False when timeout_ms passed without one, or the daemon refused us."""
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    if monitor is not None:
        poller.register(monitor, zmq.POLLIN)
    ready = dict(poller.poll(timeout_ms))
    if monitor is not None and monitor in ready:
        ev = parse_monitor_message(monitor.recv_multipart())
        why = "key not authorised" if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "CURVE handshake failed"
        print(
            f"listen: {endpoint} refused this client ({why}): check --client-key is among the daemon's "
            "publish.curve.authorised_keys and --server-key is the daemon's public key",
            file=sys.stderr,
        )
        return False
    return sub in ready
