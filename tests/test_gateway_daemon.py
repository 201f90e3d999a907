"""A real daemon (`inspector run` on the tiny test models), the real gateway process, and real clients on
127.0.0.1: an asyncua subscriber and Modbus reads. Every verdict arrives once and in order; a daemon restart,
a gateway restart, a frozen daemon and a killed one each give the outcome docs/PLC.md promises the PLC."""

from __future__ import annotations

import signal

import pytest
from daemon_helpers import Collector, free_port
from gateway_helpers import (
    Proc,
    UaClient,
    modbus_header,
    modbus_ring,
    record_fields,
    start_gateway,
    wait_gateway_healthy,
    wait_until,
    write_line,
)
from tiny_models import write_tiny_models

pytest.importorskip("asyncua")
pytest.importorskip("pymodbus")
# A guard against a hang, not a speed limit: gateway and daemon subprocesses start slowly on a loaded machine.
pytestmark = pytest.mark.timeout(900)

SOURCE = "  kind: synthetic\n  width: 128\n  height: 128\n  rate_hz: {rate}\n  pool_size: {pool}"


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("broadcast", "actuator", "opcua", "modbus")}


def _run_daemon(config, frames: int | None = None) -> Proc:
    args = ["run", "--config", str(config), "--no-console"]
    return Proc(*args, *(["--max-frames", str(frames)] if frames else []))


def test_every_verdict_once_and_in_order_across_a_daemon_restart(tmp_path, ports):
    models = write_tiny_models(tmp_path / "models")
    # pool_size: the source takes a moment to open after the sockets are bound, so the gateway is connected
    # before seq 0 (the daemon binds first, then loads models and renders the pool).
    config = write_line(tmp_path / "line.yaml", models, **ports, source=SOURCE.format(rate=100, pool=300))
    gw = start_gateway(config)
    ua = UaClient(ports["opcua"]).connect()
    sub = Collector(ports["broadcast"])  # the daemon's own account of each run (its stop event)
    runs = []
    try:
        for frames in (60, 40):
            daemon = _run_daemon(config, frames)
            assert daemon.proc.wait(120) == 0, daemon.log()
            daemon.stop()
            n_runs = len(runs)
            wait_until(lambda n=n_runs: len(sub.events("stop")) > n, what="the daemon's stop event")
            stop = sub.events("stop")[-1]
            runs.append(stop)
            assert stop["acquired"] == frames
            # On a loaded box the simulated camera may drop frames (it behaves like a camera with 8 buffers): each
            # is a camera_drop reject record before the verdict that reported it.
            drops = sum(v["camera_drops_before"] for v in sub.verdicts())
            done = sum(s["acquired"] for s in runs) + drops
            wait_until(lambda done=done: len(ua.events) >= done, 60, f"{done} records at the OPC UA subscriber")
            wait_until(lambda: ua.read("State/DaemonStopped") is True, what="DaemonStopped")
        events = ua.events
        total = len(events)
        assert total == 100 + drops
        for index, stop in enumerate(runs):
            run = [e for e in events if e["JobId"] == stop["run_id"]]
            mine = [e for e in run if e["Reason"] != "camera_drop"]
            camera = [v["camera_drops_before"] for v in sub.verdicts() if v["run_id"] == stop["run_id"]]
            assert len(run) - len(mine) == sum(camera)
            assert all(e["Reject"] and e["Lost"] for e in run if e["Reason"] == "camera_drop")
            # Each seq once, in order. A verdict the daemon could not hand to the gateway (counted undelivered
            # by the daemon: the connection was not up yet; or too old for the actuator on a starved box: stale) is a
            # lost reject record, never a gap in the stream.
            assert [e["Seq"] for e in mine] == list(range(stop["acquired"]))
            lost = [e["Seq"] for e in mine if e["Lost"]]
            assert len(lost) == stop["actuator_undelivered"] + stop["actuator_stale"], (lost, stop)
            assert all(e["Reject"] for e in mine if e["Lost"])
            assert all(e["RunIndex"] == index + 1 for e in mine)
            delivered = [e for e in mine if not e["Lost"]]
            assert all(e["DaemonResult"] in ("pass", "reject") for e in delivered)
            assert all(e["Reject"] == (e["DaemonResult"] == "reject") for e in delivered)  # nothing stale here
        assert [e["RecordNo"] for e in events] == list(range(total))
        assert ua.read("Counters/Restarts") == 1 and ua.read("State/RunIndex") == 2
        assert ua.read("State/RunId") == runs[1]["run_id"] and ua.read("State/RestartSeen") is True
        assert ua.read("Counters/Verdicts") == 100 - sum(s["actuator_undelivered"] + s["actuator_stale"] for s in runs)
        # The LastResult/Record data changes: every record, in order, in the Modbus record layout.
        wait_until(lambda: len(ua.records) >= total + 1, what="every Record data change")
        changes = [record_fields(r) for r in ua.records[1:]]
        assert [c["RECORD_NO"] for c in changes] == list(range(total))
        assert [c["SEQ"] for c in changes] == [0xFFFFFFFF if e["Seq"] == -1 else e["Seq"] for e in events]
        # The PLC's Modbus view: the last 16 records, the same decisions, the restart and the clean stop.
        ring = modbus_ring(ports["modbus"], 16)
        assert [r["RECORD_NO"] for r in ring] == list(range(total - 16, total))
        for rec, ev in zip(ring, events[-16:], strict=True):
            seq = 0xFFFFFFFF if ev["Seq"] == -1 else ev["Seq"]
            frame = 0xFFFFFFFF if ev["CameraFrameId"] == -1 else ev["CameraFrameId"]
            assert (rec["SEQ"], rec["FRAME_ID"], rec["FLAGS"] & 1) == (seq, frame, ev["Reject"])
        h = modbus_header(ports["modbus"])
        assert (h["RECORD_COUNT"], h["RUN_INDEX"], h["RESTARTS"], h["LAST_SEQ"]) == (total, 2, 1, 39)
        assert h["RESTART_SEEN"] and h["DAEMON_STOPPED"] and not h["DAEMON_ALIVE"]
        wait_gateway_healthy(ports["modbus"])
    finally:
        sub.close()
        ua.close()
        assert gw.stop() == 0, gw.log()
    assert "Traceback" not in gw.log(), gw.log()


def test_gateway_restart_then_a_frozen_then_a_killed_daemon(tmp_path, ports):
    models = write_tiny_models(tmp_path / "models")
    config = write_line(tmp_path / "line.yaml", models, **ports, source=SOURCE.format(rate=50, pool=8))
    daemon = _run_daemon(config)
    gw = start_gateway(config)
    mb = ports["modbus"]
    try:
        wait_until(lambda: modbus_header(mb)["RECORD_COUNT"] >= 10, 60, "10 records over Modbus")
        wait_until(lambda: modbus_header(mb)["DAEMON_ALIVE"] == 1, 60, "DAEMON_ALIVE")
        wait_gateway_healthy(mb)
        first = modbus_header(mb)

        # Gateway restart: while it is down the PLC gets no answer (and must reject); when it is back, a new
        # GATEWAY_START_ID, the ring and counters from 0, and the records of the running daemon again. Verdicts
        # made while it was down are not reported lost (the new gateway cannot know them): the PLC's rule covers.
        assert gw.stop() == 0, gw.log()
        with pytest.raises(ConnectionError):
            modbus_header(mb)
        gw = start_gateway(config)
        wait_until(lambda: modbus_header(mb)["RECORD_COUNT"] >= 5, 60, "records after the gateway restart")
        second = modbus_header(mb)
        assert second["GATEWAY_START_ID"] != first["GATEWAY_START_ID"]
        assert second["RUN_INDEX"] == 1 and second["RESTARTS"] == 0 and second["LOST"] == 0
        ring = modbus_ring(mb, 16)
        assert ring[0]["RECORD_NO"] == 0 and ring[0]["SEQ"] > first["LAST_SEQ"]
        seqs = [r["SEQ"] for r in ring]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

        # Frozen daemon (SIGSTOP: the process is there, nothing moves; its kernel still answers TCP): silence
        # clears the alive bit within silence_ms (1 s here). The deadline is generous on purpose (a loaded box).
        daemon.signal(signal.SIGSTOP)
        wait_until(lambda: not modbus_header(mb)["DAEMON_ALIVE"], 20, "the alive bit to clear (frozen daemon)")
        frozen_at = modbus_header(mb)["RECORD_COUNT"]
        h = modbus_header(mb)
        assert not h["DAEMON_STOPPED"] and h["SILENCE_MS"] >= 1000
        wait_gateway_healthy(mb)
        daemon.signal(signal.SIGCONT)
        wait_until(lambda: modbus_header(mb)["DAEMON_ALIVE"], 30, "the alive bit back after SIGCONT")
        wait_until(lambda: modbus_header(mb)["RECORD_COUNT"] > frozen_at + 5, 30, "records after SIGCONT")

        # Killed daemon: the connection closes at once; alive and connected clear.
        daemon.kill()
        wait_until(lambda: not modbus_header(mb)["DAEMON_CONNECTED"], 20, "the connection to drop (killed)")
        h = modbus_header(mb)
        assert not h["DAEMON_ALIVE"] and not h["DAEMON_STOPPED"]
        wait_gateway_healthy(mb)
        beat = h["HEARTBEAT"]
        wait_until(lambda: modbus_header(mb)["HEARTBEAT"] != beat, what="the gateway's heartbeat to go on")
    finally:
        daemon.kill()
        assert gw.stop() == 0, gw.log()
    assert "Traceback" not in gw.log(), gw.log()
