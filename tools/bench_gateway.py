#!/usr/bin/env python3
"""Gateway latency and throughput on loopback: daemon publish -> value readable by a PLC client.

    PYTHONPATH=. .venv/bin/python tools/bench_gateway.py [--rates 50 200] [--seconds 20] [--burst 5000]

What runs, each in its own process (all on this host, so one monotonic clock times them all):
- a publisher in this process: the daemon's two sockets (PUSH actuator, PUB broadcast), sending verdicts built by
  the daemon's own encoder (`inspector.publish.verdict_message`), stamping each seq's send time;
- the real gateway (`inspector gateway --config ...`, the plc extra);
- an OPC UA client (asyncua) subscribed to ResultReadyEvents, timing each event's arrival;
- a Modbus TCP client (pymodbus) reading the LATEST record block every --poll-ms, timing when each seq first
  shows.

Latency = arrival at the client - send at the publisher. The Modbus figure includes the polling: a read returns
at most one poll period after the value changed (the measured period is reported). The OPC UA figure includes
the subscription's publishing interval (--period-ms, 1 ms; 0 is "as fast as possible" but gets no keep-alives,
which asyncua's client then takes for a dead subscription). For each rate it reports
p50/p99/max for both clients and whether every verdict arrived; the burst sends verdicts as fast as the
publisher can and reports the rate at which the gateway delivered them all to the OPC UA subscriber.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.frames import Reason, Verdict  # noqa: E402
from inspector.publish import event_message, verdict_message  # noqa: E402

NS_URI = "urn:inspector:gateway"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _opcua_client(port: int, period_ms: int, ready, out, stop) -> None:
    import asyncio

    from asyncua import Client, ua

    arrivals: list[tuple[int, int]] = []

    async def main() -> None:
        client = Client(f"opc.tcp://127.0.0.1:{port}/inspector/", timeout=30)
        for _ in range(300):
            try:
                await client.connect()
                break
            except OSError:
                await asyncio.sleep(0.1)
        ns = await client.get_namespace_index(NS_URI)

        class Handler:
            def event_notification(self, event) -> None:
                arrivals.append((event.Seq, time.monotonic_ns()))

        sub = await client.create_subscription(period_ms, Handler())
        types = await client.nodes.base_event_type.get_children()
        names = {(await t.read_browse_name()).Name: t for t in types}
        await sub.subscribe_events(client.get_node(ua.NodeId("bench/cam", ns)), names["ResultReadyEventType"],
                                   queuesize=100000)  # fmt: skip
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await client.disconnect()

    asyncio.run(main())
    out.put(arrivals)


def _modbus_client(port: int, poll_ms: float, ready, out, stop) -> None:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    while not client.connect():
        time.sleep(0.1)
    seen: dict[int, int] = {}
    polls = 0
    t0 = time.monotonic_ns()
    ready.set()
    last = None
    while not stop.is_set():
        r = client.read_holding_registers(32, count=4)  # LATEST: RECORD_NO, SEQ
        polls += 1
        time.sleep(poll_ms / 1000)  # a PLC polls every few ms; back to back would take a core from the gateway
        if r.isError():
            continue
        seq = (r.registers[2] << 16) | r.registers[3]
        if seq != last:
            seen.setdefault(seq, time.monotonic_ns())
            last = seq
    client.close()
    out.put((seen, (time.monotonic_ns() - t0) / max(polls, 1) / 1e6))


def _verdict(seq: int) -> bytes:
    now = time.time_ns()
    v = Verdict(seq=seq, camera_frame_id=seq, result="pass", reason=Reason.OK, t_acquired_ns=now - 2_000_000,
                t_decided_ns=now, recognizer_score=0.1, config_hash="bench")  # fmt: skip
    return json.dumps(verdict_message(v, "bench", "cam", "b" * 32)).encode()


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    values = sorted(values)
    p = statistics.quantiles(values, n=100, method="inclusive")
    return p[49], p[98], values[-1]


def _report(
    args: argparse.Namespace,
    clients: set[str],
    poll_ms: float,
    phases: list[tuple[str, int, int]],
    sent: dict[int, int],
    arrivals_ua: dict[int, int],
    seen_mb: dict[int, int],
    burst: tuple[int, int, int],
) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"# bench_gateway: commit {commit.strip()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, OPC UA publishing interval "
          f"{args.period_ms} ms, Modbus poll period {poll_ms:.2f} ms, "
          f"clients: {', '.join(sorted(clients))}")  # fmt: skip
    print("| rate | client | verdicts | arrived | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for name, lo, hi in phases:
        for key, client, arrivals in (("opcua", "OPC UA event", arrivals_ua), ("modbus", "Modbus read", seen_mb)):
            if key not in clients:
                continue
            lat = [(arrivals[s] - sent[s]) / 1e6 for s in range(lo, hi) if s in arrivals]
            if client == "Modbus read":  # the poller sees the newest only; every seq is in the ring
                arrived = "n/a (newest polled)"
            else:
                arrived = f"{sum(s in arrivals for s in range(lo, hi))}/{hi - lo}"
            p50, p99, worst = _quantiles(lat) if len(lat) > 2 else (float("nan"),) * 3
            print(f"| {name} | {client} | {hi - lo} | {arrived} | {p50:.2f} | {p99:.2f} | {worst:.2f} |")
    burst_first, seq, burst_start = burst
    got = [s for s in range(burst_first, seq) if s in arrivals_ua]
    if got:
        end = max(arrivals_ua[s] for s in got)
        rate = len(got) / ((end - burst_start) / 1e9)
        in_order = [s for s, _ in sorted(arrivals_ua.items(), key=lambda kv: kv[1]) if s >= burst_first] == got
        print(f"\nburst of {args.burst}: {len(got)} arrived at the OPC UA subscriber, in order: {in_order}, "
              f"{rate:.0f} verdicts/s sustained end to end")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0], help="verdicts per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each rate runs")
    ap.add_argument("--burst", type=int, default=5000, help="verdicts sent back to back for the throughput figure")
    ap.add_argument("--period-ms", type=int, default=1, help="the OPC UA subscription's publishing interval")
    ap.add_argument("--poll-ms", type=float, default=1.0, help="pause between two Modbus reads")
    ap.add_argument("--clients", default="opcua,modbus",
                    help="which clients run (comma-separated): one alone leaves the other's polling off the cores, "
                    "as on a line where the PLC speaks one protocol")  # fmt: skip
    args = ap.parse_args()
    clients = {c.strip() for c in args.clients.split(",") if c.strip()}
    if not clients or clients - {"opcua", "modbus"}:
        ap.error(f"--clients: opcua, modbus or both, not {args.clients!r}")

    ports = {k: free_port() for k in ("broadcast", "actuator", "opcua", "modbus")}
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    config = tmp / "line.yaml"
    config.write_text(
        f"""line: {{name: bench, camera: cam}}
source: {{kind: synthetic}}
models: {{recognizer: {{path: r.onnx}}, segmenter_mode: never}}
publish:
  broadcast: {{bind: "tcp://127.0.0.1:{ports["broadcast"]}"}}
  actuator: {{bind: "tcp://127.0.0.1:{ports["actuator"]}"}}
gateway:
  max_age_ms: null
  opcua: {{endpoint: "opc.tcp://127.0.0.1:{ports["opcua"]}/inspector/", allow_anonymous: true}}
  modbus: {{port: {ports["modbus"]}, defect_classes: [defect]}}
"""
    )
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{ports['broadcast']}")
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 1_000_000)
    push.bind(f"tcp://127.0.0.1:{ports['actuator']}")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "inspector.cli", "gateway", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL,
    )
    mp_ctx = mp.get_context("spawn")
    stop, out_ua, out_mb = mp_ctx.Event(), mp_ctx.Queue(), mp_ctx.Queue()
    ready_ua, ready_mb = mp_ctx.Event(), mp_ctx.Event()
    ua_proc = mp_ctx.Process(target=_opcua_client, args=(ports["opcua"], args.period_ms, ready_ua, out_ua, stop))
    mb_proc = mp_ctx.Process(target=_modbus_client, args=(ports["modbus"], args.poll_ms, ready_mb, out_mb, stop))
    procs = [(p, r) for c, p, r in (("opcua", ua_proc, ready_ua), ("modbus", mb_proc, ready_mb)) if c in clients]
    for proc, _ in procs:
        proc.start()
    if not all(ready.wait(120) for _, ready in procs):
        print("clients did not connect", file=sys.stderr)
        return 1
    hello = event_message("heartbeat", "bench", "cam", run_id="b" * 32)
    for _ in range(20):  # the gateway hears the publisher: both connections up
        pub.send_multipart([b"bench/cam/event", json.dumps(hello).encode()])
        time.sleep(0.05)

    sent: dict[int, int] = {}
    seq = 0
    phases: list[tuple[str, int, int]] = []
    for rate in args.rates:
        first = seq
        period = 1e9 / rate
        start = time.monotonic_ns()
        n = int(rate * args.seconds)
        for i in range(n):
            due = start + int(i * period)
            while (now := time.monotonic_ns()) < due:
                time.sleep(min(0.001, (due - now) / 1e9))
            payload = _verdict(seq)
            sent[seq] = time.monotonic_ns()
            push.send_multipart([b"bench/cam/verdict", payload])
            seq += 1
        phases.append((f"{rate:g}/s", first, seq))
        time.sleep(1.0)
    burst_first = seq
    payloads = [_verdict(s) for s in range(seq, seq + args.burst)]
    burst_start = time.monotonic_ns()
    for payload in payloads:
        sent[seq] = time.monotonic_ns()
        push.send_multipart([b"bench/cam/verdict", payload])
        seq += 1
    time.sleep(max(5.0, args.burst / 500))
    stop.set()
    arrivals_ua = dict(out_ua.get(timeout=120)) if "opcua" in clients else {}
    seen_mb, poll_ms = out_mb.get(timeout=120) if "modbus" in clients else ({}, float("nan"))
    for proc, _ in procs:
        proc.join(30)
    gateway.terminate()
    gateway.wait(30)
    push.close(0)
    pub.close(0)
    ctx.term()

    _report(args, clients, poll_ms, phases, sent, arrivals_ua, seen_mb, (burst_first, seq, burst_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
