"""ZeroMQ intake: the daemon's actuator channel (PULL: every verdict) and broadcast stream (SUB: this camera's
events), on the gateway's event loop, feeding `Accounting`.

The PULL socket follows docs/PROTOCOL.md "Gateway side", with one deliberate difference: no ZMTP heartbeats
on this side. libzmq aborts the process (`Assertion failed: _input_stopped`, zeromq/libzmq#3596) when a
heartbeat times out on a receiver whose input is stopped at its high-water mark, which is exactly a gateway
catching up after a burst. A daemon whose host froze is noticed instead by TCP keepalive (about 4 s) and, first,
by silence: no verdict or heartbeat event for gateway.daemon.silence_ms clears "alive" whatever the socket
says. The daemon's side keeps its heartbeats (it drops a frozen gateway). A short reconnect interval brings a
restarted daemon back at once, and a socket monitor tells the accounting whether the connection is up
(handshake done) or down. Messages are drained in slices, so a burst costs one pass through the sinks per
slice, not one per verdict.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from inspector.gateway.accounting import Accounting
from inspector.gateway.records import Record

log = logging.getLogger(__name__)

# TCP keepalive: first probe after 1 s idle, then every 1 s, 3 unanswered probes close the connection.
KEEPALIVE = {zmq.TCP_KEEPALIVE: 1, zmq.TCP_KEEPALIVE_IDLE: 1, zmq.TCP_KEEPALIVE_INTVL: 1, zmq.TCP_KEEPALIVE_CNT: 3}
# Most messages taken from one socket before the records go to the sinks and the loop serves its clients: a
# burst (after a stall upstream) is handed over in slices, so OPC UA publish cycles and Modbus requests are
# answered in between, and a subscriber's queue needs to hold one slice, not the whole burst.
BATCH = 64


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
        self.monitor = self.pull.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.sub: zmq.asyncio.Socket | None = None
        if broadcast is not None:
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.RCVHWM, 10000)
            self.sub.setsockopt(zmq.RECONNECT_IVL, reconnect_ms)
            self.sub.setsockopt(zmq.RECONNECT_IVL_MAX, max(reconnect_ms, 1000))
            self.sub.setsockopt_string(zmq.SUBSCRIBE, f"{topic}/event")
        # Synchronous views of the same sockets, for non-blocking drains once the poller said they are readable
        # (the asyncio sockets would wrap every message in a Future).
        self._sync = {sock: zmq.Socket.shadow(sock.underlying) for sock in (self.pull, self.monitor, self.sub) if sock}
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
        if self.sub is not None:
            poller.register(self.sub, zmq.POLLIN)
        while not self._closed:
            ready = dict(await poller.poll(100))
            if self.monitor in ready:
                self._drain_monitor()
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
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connections += 1
                log.info("connected to the daemon's actuator channel")
            elif event == zmq.EVENT_DISCONNECTED and self._connections > 0:
                self._connections -= 1
                log.warning("the daemon's actuator channel disconnected")
        self.accounting.connection(self._connections > 0)

    def close(self) -> None:
        self._closed = True
        self.monitor.close(linger=0)
        self.pull.disable_monitor()
        self.pull.close(linger=0)
        if self.sub is not None:
            self.sub.close(linger=0)
        self.ctx.term()


def _json(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except ValueError:
        return None  # counted as malformed by the accounting
