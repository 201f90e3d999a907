"""Helpers for the gateway tests: line configs with a gateway section, the daemon and the gateway as
subprocesses, a real asyncua client (subscribed to every record) on its own event loop, real Modbus reads
decoded with the register map, and a stand-in daemon (real ZeroMQ sockets, real wire messages) for injecting
faults a healthy daemon does not make on demand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from inspector.frames import Reason, Verdict
from inspector.gateway.modbus import HEADER, LATEST_BASE, RECORD, RECORD_SIZE, RING_BASE, STATUS_BITS
from inspector.publish import event_message, verdict_message

NS_URI = "urn:inspector:gateway"
EVENT_FIELDS = (
    "RecordNo", "Seq", "CameraFrameId", "FrameIdInferred", "Reject", "Reason", "ReasonCode", "Stale", "Lost",
    "JobId", "RunIndex", "DaemonResult", "PartId", "ResultState", "Flags", "DefectCount", "DefectClasses",
)  # fmt: skip


def wait_until(predicate, timeout_s: float = 30.0, what: str = "a condition", interval_s: float = 0.05,
               detail=None) -> None:  # fmt: skip
    """Poll with a generous deadline: the suite runs on a loaded 2-core box; never assert on how fast.
    `detail()` is added to the failure message (what the processes said, what the clients have)."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except (OSError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > end:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")
        time.sleep(interval_s)


def write_line(
    path: Path,
    models: tuple[Path, Path] | None,
    *,
    broadcast: int,
    actuator: int,
    opcua: int,
    modbus: int,
    source: str = "",
    gateway_extra: str = "",
    opcua_extra: str = "    allow_anonymous: true\n",
) -> Path:
    """A line config with a gateway section. `models` None: a stand-in daemon (the models are never loaded)."""
    rec, seg = models if models is not None else (Path("rec.onnx"), Path("seg.onnx"))
    path.write_text(
        f"""version: 1
line: {{name: test, camera: cam}}
source:
{source or "  kind: synthetic"}
models:
  recognizer: {{path: {rec}}}
  segmenter: {{path: {seg}}}
  onnxruntime: {{intra_op_threads: 1}}
publish:
  heartbeat_ms: 200
  broadcast: {{bind: "tcp://127.0.0.1:{broadcast}"}}
  actuator: {{bind: "tcp://127.0.0.1:{actuator}"}}
metrics: {{enabled: false}}
gateway:
  daemon: {{reconnect_ms: 20, silence_ms: 1000}}
  lost_after_ms: 300
  status_hold_ms: 60000
{gateway_extra}  opcua:
    endpoint: opc.tcp://127.0.0.1:{opcua}/inspector/
{opcua_extra}  modbus:
    port: {modbus}
    defect_classes: [defect, crack]
"""
    )
    return path


class Proc:
    """`inspector ...` as a subprocess, its stderr collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inspector.cli", *args],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, ""):
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def wait_log(self, text: str, timeout_s: float = 240) -> None:
        wait_until(
            lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
            timeout_s,
            f"{text!r} from inspector {self.args[0]}",
            detail=self.log,  # what it said so far: still importing, or stuck somewhere
        )
        assert any(text in line for line in self.lines), f"inspector {self.args[0]} exited:\n{self.log()}"

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)


def start_gateway(config: Path) -> Proc:
    gw = Proc("gateway", "--config", str(config))
    try:
        gw.wait_log("ready (")
    except BaseException:
        gw.kill()  # one that never got ready must not outlive the test: it kept its ports and a core busy
        raise
    return gw


# ------------------------------------------------------------------------------------------------- OPC UA


class UaClient:
    """An asyncua client on its own event loop (thread), subscribed to every ResultReadyEvent and every data
    change of LastResult/Record of camera test/cam. `events` and `records` fill as notifications arrive."""

    def __init__(self, port: int, *, user: str | None = None, password: str | None = None, period_ms: int = 10):
        self.url = f"opc.tcp://127.0.0.1:{port}/inspector/"
        self.user, self.password, self.period_ms = user, password, period_ms
        self.events: list[dict[str, Any]] = []
        self.records: list[list[int]] = []
        self.notices: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client: Any = None
        self.ns = 0

    def call(self, coro, timeout_s: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def connect(self, timeout_s: float = 60) -> UaClient:
        self.call(self._connect(timeout_s), timeout_s + 10)
        return self

    async def _connect(self, timeout_s: float) -> None:
        from asyncua import Client, ua

        end = time.monotonic() + timeout_s
        while True:
            client = Client(self.url, timeout=10)
            if self.user is not None:
                client.set_user(self.user)
                client.set_password(self.password or "")
            try:
                await client.connect()
                break
            except (OSError, asyncio.TimeoutError):
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.2)
        self.client = client
        self.ns = await client.get_namespace_index(NS_URI)
        outer = self

        class Handler:
            def event_notification(self, event: Any) -> None:
                fields = event.get_event_props_as_fields_dict()
                names = {str(k): v.Value for k, v in fields.items()}
                if "Kind" in names:
                    outer.notices.append(names)
                else:
                    outer.events.append({n: names.get(n) for n in EVENT_FIELDS})

            def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
                outer.records.append(list(value))

        sub = await client.create_subscription(self.period_ms, Handler())
        cam = client.get_node(ua.NodeId("test/cam", self.ns))
        types = await client.nodes.base_event_type.get_children()
        names = {(await t.read_browse_name()).Name: t for t in types}
        await sub.subscribe_events(cam, names["ResultReadyEventType"], queuesize=100000)
        await sub.subscribe_events(cam, names["GatewayNoticeEventType"], queuesize=1000)
        record = client.get_node(ua.NodeId("test/cam/LastResult/Record", self.ns))
        await sub.subscribe_data_change(record, queuesize=100000)

    def read(self, path: str) -> Any:
        from asyncua import ua

        return self.call(self.client.get_node(ua.NodeId(f"test/cam/{path}", self.ns)).read_value())

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):  # the server may be gone already
                self.call(self.client.disconnect(), 20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ------------------------------------------------------------------------------------------------- Modbus


def modbus_read(port: int, address: int, count: int) -> list[int]:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=1)
    try:
        if not client.connect():
            raise ConnectionError(f"no Modbus server on port {port}")
        out: list[int] = []
        while count > 0:  # at most 125 registers a request
            n = min(count, 125)
            r = client.read_holding_registers(address, count=n)
            if r.isError():
                raise ConnectionError(f"Modbus read {address}+{n}: {r}")
            out += r.registers
            address, count = address + n, count - n
        return out
    finally:
        client.close()


def _decode(regs: list[int], fields) -> dict[str, int]:
    out = {}
    for f in fields:
        value = 0
        for i in range(f.width):
            value = (value << 16) | regs[f.offset + i]
        out[f.name] = value
    return out


def modbus_header(port: int) -> dict[str, int]:
    h = _decode(modbus_read(port, 0, 32), HEADER)
    for bit, name, _ in STATUS_BITS:
        h[name] = (h["STATUS"] >> bit) & 1
    return h


def wait_gateway_healthy(port: int) -> None:
    """GATEWAY_HEALTHY clears while the gateway's loop is more than 1 s late, which a starved test box can do to
    it for a moment: the tests check it comes back on, not that it never blinked."""
    wait_until(lambda: modbus_header(port)["GATEWAY_HEALTHY"] == 1, 60, "GATEWAY_HEALTHY")


def modbus_ring(port: int, size: int) -> list[dict[str, int]]:
    """Every valid ring slot, oldest record first."""
    regs = modbus_read(port, RING_BASE, size * RECORD_SIZE)
    slots = [_decode(regs[k * RECORD_SIZE : (k + 1) * RECORD_SIZE], RECORD) for k in range(size)]
    return sorted((s for s in slots if s["FLAGS"] & 128), key=lambda s: s["RECORD_NO"])


def modbus_latest(port: int) -> dict[str, int]:
    return _decode(modbus_read(port, LATEST_BASE, RECORD_SIZE), RECORD)


def record_fields(regs: list[int]) -> dict[str, int]:
    return _decode(regs, RECORD)


# -------------------------------------------------------------------------------------- stand-in daemon


class FakeDaemon:
    """The daemon's two sockets, bound by the test, sending messages built by the daemon's own encoders."""

    def __init__(self, broadcast: int, actuator: int, run_id: str = "a" * 32):
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.bind(f"tcp://127.0.0.1:{broadcast}")
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, 100000)
        self.push.setsockopt(zmq.SNDTIMEO, 10000)
        self.push.bind(f"tcp://127.0.0.1:{actuator}")
        self.run_id = run_id

    def verdict(self, seq: int, *, frame: int | None = None, result: str = "pass", reason: Reason = Reason.OK,
                age_ms: float = 2.0, drops: int = 0) -> None:  # fmt: skip
        acquired = time.time_ns() - int(age_ms * 1e6)
        v = Verdict(
            seq=seq,
            camera_frame_id=100 + seq if frame is None else frame,
            result=result,  # type: ignore[arg-type]
            reason=reason,
            t_acquired_ns=acquired,
            t_decided_ns=acquired + 1_000_000,
            camera_drops_before=drops,
            recognizer_score=0.1 if reason.inspected else None,
            config_hash="cafe",
        )
        payload = json.dumps(verdict_message(v, "test", "cam", self.run_id)).encode()
        self.push.send_multipart([b"test/cam/verdict", payload])

    def event(self, kind: str, **fields: Any) -> None:
        msg = event_message(kind, "test", "cam", run_id=self.run_id, **fields)
        self.pub.send_multipart([b"test/cam/event", json.dumps(msg).encode()])

    def close(self) -> None:
        self.pub.close(0)
        self.push.close(0)
        self.ctx.term()
