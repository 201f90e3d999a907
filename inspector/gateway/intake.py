"""ZeroMQ intake: the daemon's actuator channel (PULL: every verdict) and broadcast stream (SUB: this camera's
events), on the gateway's event loop, feeding `Accounting`.

The PULL socket follows docs/PROTOCOL.md "Gateway side", with one deliberate difference: no ZMTP heartbeats
on this side. libzmq aborts the process (`Assertion failed: _input_stopped`, zeromq/libzmq#3596) when a
heartbeat times out on a receiver whose input is stopped at its high-water mark, which is exactly a gateway
catching up after a burst. A daemon whose host froze is noticed instead by TCP keepalive (about 4 s) and, first,
by silence: no verdict or heartbeat event for gateway.daemon.silence_ms clears "alive" whatever the socket
says. The daemon's side keeps its heartbeats (it drops a frozen gateway). A short reconnect interval brings a
restarted daemon back at once, and a socket monitor tells the accounting whether the connection is up
(handshake done) or down. A handshake the daemon refuses (another receiver already connected, or with
publish.curve a key it does not know) is one libzmq never retries by itself: the intake reconnects after
max(reconnect_ms, 1 s), logging why (rate-limited), so the gateway comes back once the other receiver has gone
or its key is authorised. Messages are drained in slices, so a burst costs one pass through the sinks per
slice, not one per verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from inspector.curve import ClientKeys
from inspector.gateway.accounting import Accounting
from inspector.gateway.records import Record

log = logging.getLogger(__name__)

# TCP keepalive: first probe after 1 s idle, then every 1 s, 3 unanswered probes close the connection.
KEEPALIVE = {zmq.TCP_KEEPALIVE: 1, zmq.TCP_KEEPALIVE_IDLE: 1, zmq.TCP_KEEPALIVE_INTVL: 1, zmq.TCP_KEEPALIVE_CNT: 3}
# Most messages taken from one socket before the records go to the sinks and the loop serves its clients: a
# burst (after a stall upstream) is handed over in slices, so OPC UA publish cycles and Modbus requests are
# answered in between, and a subscriber's queue needs to hold one slice, not the whole burst.
BATCH = 64
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
# At most one log line per this long about refused handshakes (the intake retries every second or so).
_REFUSED_LOG_EVERY_S = 30.0


def connect_endpoint(bind: str) -> str:
    """The address a client on this host connects to for a bind address (wildcards -> loopback)."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if bind.startswith(wildcard):
            return "tcp://127.0.0.1:" + bind[len(wildcard) :]
    return bind


class Intake:
    def __init__(
        self,
        accounting: Accounting,
        actuator: str,
        broadcast: str | None,
        topic: str,
        deliver: Callable[[list[Record]], Awaitable[None]],
        *,
        reconnect_ms: int = 100,
        rcvhwm: int = 1000,
        curve: ClientKeys | None = None,
    ):
        self.accounting = accounting
        self.actuator = actuator
        self.broadcast = broadcast
        self.topic = topic
        self.deliver = deliver
        self.ctx = zmq.asyncio.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, rcvhwm)
        self.pull.setsockopt(zmq.RECONNECT_IVL, reconnect_ms)
        self.pull.setsockopt(zmq.RECONNECT_IVL_MAX, max(reconnect_ms, 1000))
        for option, value in KEEPALIVE.items():
            self.pull.setsockopt(option, value)
        if curve is not None:
            curve.apply(self.pull)
        self.monitor = self.pull.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED
        )
        self.sub: zmq.asyncio.Socket | None = None
        self.sub_monitor: zmq.asyncio.Socket | None = None
        if broadcast is not None:
            self.sub = self.ctx.socket(zmq.SUB)
            if curve is not None:
                curve.apply(self.sub)
            self.sub_monitor = self.sub.get_monitor_socket(_HANDSHAKE_FAILED)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.RCVHWM, 10000)
            self.sub.setsockopt(zmq.RECONNECT_IVL, reconnect_ms)
            self.sub.setsockopt(zmq.RECONNECT_IVL_MAX, max(reconnect_ms, 1000))
            self.sub.setsockopt_string(zmq.SUBSCRIBE, f"{topic}/event")
        # Synchronous views of the same sockets, for non-blocking drains once the poller said they are readable
        # (the asyncio sockets would wrap every message in a Future).
        self._sync = {
            sock: zmq.Socket.shadow(sock.underlying)
            for sock in (self.pull, self.monitor, self.sub, self.sub_monitor)
            if sock
        }
        self._retry_after_s = max(reconnect_ms, 1000) / 1000
        self._retry_at: dict[zmq.asyncio.Socket, float] = {}  # socket -> monotonic time to connect it again
        self._refused_logged_at = -1e9
        self._refused_since_log = 0
        self._verdict_topic = f"{topic}/verdict".encode()
        self._event_topic = f"{topic}/event".encode()
        self._connections = 0
        self._closed = False

    def connect(self) -> None:
        self.pull.connect(self.actuator)
        if self.sub is not None and self.broadcast is not None:
            self.sub.connect(self.broadcast)
        log.info(
            "taking verdicts from %s%s", self.actuator, f", events from {self.broadcast}" if self.broadcast else ""
        )

    async def run(self) -> None:
        """Receive until close(); each batch of records goes to `deliver` before the next is read."""
        poller = zmq.asyncio.Poller()
        poller.register(self.monitor, zmq.POLLIN)
        poller.register(self.pull, zmq.POLLIN)
        if self.sub is not None and self.sub_monitor is not None:
            poller.register(self.sub, zmq.POLLIN)
            poller.register(self.sub_monitor, zmq.POLLIN)
        while not self._closed:
            ready = dict(await poller.poll(100))
            if self.monitor in ready:
                self._drain_monitor()
            if self.sub_monitor is not None and self.sub_monitor in ready and self.sub is not None:
                self._drain_failures(self.sub_monitor, self.sub, "broadcast")
            self._reconnect_due()
            records: list[Record] = []
            # Events first: a start or stop event should be known before the verdicts that follow it.
            if self.sub is not None and self.sub in ready:
                for topic, payload in self._drain(self.sub):
                    if topic == self._event_topic:
                        records += self.accounting.event(_json(payload))
            if self.pull in ready:
                for topic, payload in self._drain(self.pull):
                    if topic != self._verdict_topic:
                        self.accounting.state.counters.malformed += 1
                        continue
                    records += self.accounting.verdict(_json(payload))
            if records:
                await self.deliver(records)
            await asyncio.sleep(0)  # a ready poll does not yield by itself: let the servers run between slices

    def _drain(self, sock: zmq.asyncio.Socket) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        sync = self._sync[sock]
        while len(out) < BATCH:
            try:
                frames = sync.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 2:
                self.accounting.state.counters.malformed += 1
                continue
            out.append((bytes(frames[0]), bytes(frames[1])))
        return out

    def _drain_monitor(self) -> None:
        while True:
            try:
                frames = self._sync[self.monitor].recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            event = parse_monitor_message(frames)["event"]
            if event & _HANDSHAKE_FAILED:
                self._refused(self.pull, "actuator channel", event)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connections += 1
                log.info("connected to the daemon's actuator channel")
            elif event == zmq.EVENT_DISCONNECTED and self._connections > 0:
                self._connections -= 1
                log.warning("the daemon's actuator channel disconnected")
        self.accounting.connection(self._connections > 0)

    def _drain_failures(self, monitor: zmq.asyncio.Socket, sock: zmq.asyncio.Socket, what: str) -> None:
        while True:
            try:
                frames = self._sync[monitor].recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._refused(sock, what, parse_monitor_message(frames)["event"])

    def _refused(self, sock: zmq.asyncio.Socket, what: str, event: int) -> None:
        """The daemon ended our handshake: say why, and after a refusal (which libzmq never retries, unlike the
        other failures) connect again a little later."""
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._retry_at.setdefault(sock, time.monotonic() + self._retry_after_s)
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._refused_logged_at < _REFUSED_LOG_EVERY_S:
            return
        why = (
            "refused: another receiver is already connected to the actuator channel, or (publish.curve) this "
            "gateway's key is not among the daemon's authorised_keys"
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            else "handshake failed: check that both sides agree on CURVE (publish.curve, gateway.daemon.curve_*)"
        )
        log.warning(
            "the daemon's %s: %s (%d time(s) in the last %.0f s); retrying every %.1f s",
            what,
            why,
            self._refused_since_log,
            min(now - self._refused_logged_at, _REFUSED_LOG_EVERY_S),
            self._retry_after_s,
        )
        self._refused_logged_at, self._refused_since_log = now, 0

    def _reconnect_due(self) -> None:
        now = time.monotonic()
        for sock, at in list(self._retry_at.items()):
            if now < at:
                continue
            del self._retry_at[sock]
            endpoint = self.actuator if sock is self.pull else self.broadcast
            assert endpoint is not None
            if sock is self.pull and self._connections > 0:
                continue  # connected meanwhile (a later attempt of libzmq's own): leave it alone
            with contextlib.suppress(zmq.ZMQError):  # already gone with the refused connection
                sock.disconnect(endpoint)
            sock.connect(endpoint)

    def close(self) -> None:
        self._closed = True
        self.monitor.close(linger=0)
        self.pull.disable_monitor()
        if self.sub_monitor is not None and self.sub is not None:
            self.sub_monitor.close(linger=0)
            self.sub.disable_monitor()
        self.pull.close(linger=0)
        if self.sub is not None:
            self.sub.close(linger=0)
        self.ctx.term()


def _json(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except ValueError:
        return None  # counted as malformed by the accounting
