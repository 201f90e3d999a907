"""The gateway process against faults injected on the wire: a stand-in daemon (real ZeroMQ sockets, messages
from the daemon's own encoders) loses verdicts, sends stale ones, reports camera drops, loses its last
verdict, restarts, goes silent and vanishes; real OPC UA and Modbus clients see the documented outcome. And
clients that stall while a burst goes through must not hold anyone else up."""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import subprocess
import sys
import textwrap

import pytest
from daemon_helpers import free_port
from gateway_helpers import (
    FakeDaemon,
    UaClient,
    modbus_header,
    modbus_ring,
    record_fields,
    start_gateway,
    wait_gateway_healthy,
    wait_until,
    write_line,
)

from inspector.frames import Reason

pytest.importorskip("asyncua")
pytest.importorskip("pymodbus")
# A guard against a hang, not a speed limit: gateway and daemon subprocesses start slowly on a loaded machine.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("broadcast", "actuator", "opcua", "modbus")}


def _explain(ua: UaClient, gw) -> str:
    return f"OPC UA events {[e['Seq'] for e in ua.events]}, notices {[n['Kind'] for n in ua.notices]}\n{gw.log()}"


def _alive(ua: UaClient, daemon: FakeDaemon) -> bool:
    daemon.event("heartbeat", last_seq=None)
    return ua.read("State/DaemonAlive") is True


def test_injected_faults_give_the_documented_plc_side_outcome(tmp_path, ports):
    daemon = FakeDaemon(ports["broadcast"], ports["actuator"], run_id="a" * 32)
    config = write_line(tmp_path / "line.yaml", None, **ports)
    gw = start_gateway(config)
    ua = UaClient(ports["opcua"]).connect()
    try:
        # Heartbeats until the gateway hears them: then both of its connections are up.
        wait_until(lambda: _alive(ua, daemon), what="the gateway to hear the stand-in daemon")
        for seq in range(5):  # frames 100..104
            daemon.verdict(
                seq, result="reject" if seq == 2 else "pass", reason=Reason.DEFECT if seq == 2 else Reason.OK
            )
        daemon.verdict(7)  # 5 and 6 lost on the way; frame 107 and no camera drop: their frames are 105, 106
        daemon.verdict(8, age_ms=5000)  # stale (gateway.max_age_ms 2000)
        daemon.verdict(9, frame=111, drops=2)  # the camera lost frames 109 and 110
        daemon.event("heartbeat", last_seq=11)  # 10 and 11 published, never arrive: lost after lost_after_ms
        wait_until(lambda: len(ua.events) >= 14, what="14 records", detail=lambda: _explain(ua, gw))
        daemon.run_id = "b" * 32  # the daemon restarts
        daemon.event("start")
        daemon.verdict(0, frame=0)
        daemon.verdict(1, frame=1)
        wait_until(lambda: len(ua.events) >= 16, what="the new run's records")
        got = [(e["Seq"], e["CameraFrameId"], e["Reason"], e["Reject"], e["Stale"], e["Lost"]) for e in ua.events]
        assert got == [
            (0, 100, "ok", False, False, False),
            (1, 101, "ok", False, False, False),
            (2, 102, "defect", True, False, False),
            (3, 103, "ok", False, False, False),
            (4, 104, "ok", False, False, False),
            (5, 105, "lost", True, False, True),
            (6, 106, "lost", True, False, True),
            (7, 107, "ok", False, False, False),
            (8, 108, "ok", True, True, False),
            (-1, 109, "camera_drop", True, False, True),
            (-1, 110, "camera_drop", True, False, True),
            (9, 111, "ok", False, False, False),
            (10, -1, "lost", True, False, True),
            (11, -1, "lost", True, False, True),
            (0, 0, "ok", False, False, False),
            (1, 1, "ok", False, False, False),
        ], got
        assert [e["RecordNo"] for e in ua.events] == list(range(16))
        assert [e["RunIndex"] for e in ua.events] == [1] * 14 + [2, 2]
        assert ua.events[5]["FrameIdInferred"] and not ua.events[12]["FrameIdInferred"]
        # Every record was also a data change of LastResult/Record, in the Modbus record layout.
        wait_until(lambda: len(ua.records) >= 17, what="the Record data changes")  # + the initial value
        assert [record_fields(r)["RECORD_NO"] for r in ua.records[1:]] == list(range(16))
        assert ua.read("Counters/Lost") == 4 and ua.read("Counters/Gaps") == 2
        assert ua.read("Counters/Stale") == 1 and ua.read("Counters/CameraDrops") == 2
        assert ua.read("Counters/Restarts") == 1 and ua.read("State/RunId") == "b" * 32
        assert ua.read("State/GapSeen") and ua.read("State/RestartSeen") and ua.read("State/StaleSeen")
        kinds = {n["Kind"] for n in ua.notices}
        assert {"gap", "stale", "restart"} <= kinds

        # What a PLC polling Modbus sees: the same records, the same decisions.
        wait_until(lambda: modbus_header(ports["modbus"])["RECORD_COUNT"] == 16, what="Modbus to show 16 records")
        h = modbus_header(ports["modbus"])
        assert (h["LOST"], h["GAPS"], h["STALE"], h["RESTARTS"], h["CAMERA_DROPS"], h["RUN_INDEX"]) == (
            4,
            2,
            1,
            1,
            2,
            2,
        )
        assert h["GAP_SEEN"] and h["RESTART_SEEN"] and h["STALE_SEEN"] and h["DAEMON_ALIVE"]
        ring = modbus_ring(ports["modbus"], 16)
        assert [r["RECORD_NO"] for r in ring] == list(range(16))
        for rec, ev in zip(ring, ua.events, strict=True):
            assert rec["SEQ"] == (0xFFFFFFFF if ev["Seq"] == -1 else ev["Seq"])
            assert rec["FRAME_ID"] == (0xFFFFFFFF if ev["CameraFrameId"] == -1 else ev["CameraFrameId"])
            assert rec["FLAGS"] & 1 == ev["Reject"] and rec["REASON"] == ev["ReasonCode"]
        assert ring[5]["REASON"] == 16 and ring[9]["REASON"] == 17 and ring[8]["FLAGS"] & 16

        # Silent: the sockets stay up (ZeroMQ heartbeats answered) but nothing is sent. Alive clears, within
        # silence_ms (1 s here) plus a tick; the deadline below is generous on purpose (a loaded box).
        wait_until(lambda: not modbus_header(ports["modbus"])["DAEMON_ALIVE"], 15, "the alive bit to clear")
        h = modbus_header(ports["modbus"])
        assert h["DAEMON_CONNECTED"] and not h["DAEMON_ALIVE"]
        assert ua.read("State/Healthy") is False  # not while the daemon is silent, however the gateway is
        wait_gateway_healthy(ports["modbus"])
        wait_until(lambda: ua.read("State/GatewayHealthy") is True, 60, "OPC UA GatewayHealthy")
        wait_until(lambda: "daemon_silent" in {n["Kind"] for n in ua.notices}, what="the daemon_silent notice")
        # Vanished: the connection drops too.
        daemon.close()
        daemon = None
        wait_until(lambda: not modbus_header(ports["modbus"])["DAEMON_CONNECTED"], 15, "the connected bit to clear")
        assert ua.read("State/DaemonConnected") is False
    finally:
        ua.close()
        assert gw.stop() == 0, gw.log()
        if daemon is not None:
            daemon.close()
    assert "Traceback" not in gw.log(), gw.log()


STALLED_CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from asyncua import Client, ua

    async def main():
        client = Client(sys.argv[1])
        await client.connect()
        ns = await client.get_namespace_index("urn:inspector:gateway")
        class Handler:
            def event_notification(self, event):
                pass
        sub = await client.create_subscription(10, Handler())
        types = await client.nodes.base_event_type.get_children()
        names = {(await t.read_browse_name()).Name: t for t in types}
        await sub.subscribe_events(client.get_node(ua.NodeId("test/cam", ns)), names["ResultReadyEventType"],
                                   queuesize=0)
        print("subscribed", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_stalled_clients_hold_up_nobody(tmp_path, ports):
    daemon = FakeDaemon(ports["broadcast"], ports["actuator"])
    config = write_line(tmp_path / "line.yaml", None, **ports)
    gw = start_gateway(config)
    ua = UaClient(ports["opcua"]).connect()
    stalled = subprocess.Popen(
        [sys.executable, "-c", STALLED_CLIENT, f"opc.tcp://127.0.0.1:{ports['opcua']}/inspector/"],
        stdout=subprocess.PIPE,
        text=True,
    )
    modbus_hog = socket.create_connection(("127.0.0.1", ports["modbus"]))
    try:
        assert stalled.stdout is not None and stalled.stdout.readline().strip() == "subscribed"
        stalled.send_signal(signal.SIGSTOP)  # subscribed, then frozen: it neither asks for nor reads anything
        # A Modbus client that sends requests and never reads the answers.
        request = b"".join(struct.pack(">HHHBBHH", i, 0, 6, 1, 3, 0, 100) for i in range(2000))
        modbus_hog.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # whatever the kernel takes
            modbus_hog.send(request)
        wait_until(lambda: _alive(ua, daemon), what="the gateway to hear the stand-in daemon")
        n = 1500  # more than opcua.max_queue_size (1000): the stalled client's queue overflows, bounded
        for seq in range(n):  # a burst, as after a stall upstream
            daemon.verdict(seq)
        wait_until(lambda: len(ua.events) >= n, 120, f"{n} records at the healthy OPC UA client",
                   detail=lambda: _explain(ua, gw)[-3000:])  # fmt: skip
        assert [e["Seq"] for e in ua.events] == list(range(n))
        wait_until(lambda: modbus_header(ports["modbus"])["RECORD_COUNT"] == n, 60, "Modbus to show every record")
        assert [r["SEQ"] for r in modbus_ring(ports["modbus"], 16)] == list(range(n - 16, n))
        wait_gateway_healthy(ports["modbus"])
        assert stalled.poll() is None  # still there, still frozen
    finally:
        stalled.kill()
        stalled.wait(10)
        modbus_hog.close()
        ua.close()
        assert gw.stop() == 0, gw.log()
        daemon.close()
    assert "Traceback" not in gw.log(), gw.log()
