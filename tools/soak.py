#!/usr/bin/env python3
"""Soak and fault harness: the real daemon over many frames with faults injected at random, then reconciled.

    PYTHONPATH=$PWD .venv/bin/python tools/soak.py --frames 1000000 --seed 1 --json soak.json

The daemon runs as a subprocess (`tools/soak_faults.py`: `inspector run` with the harness's source and backend
wrapper registered in that process only; see there) on the tiny ONNX models of tests/tiny_models.py, a 64x64
line paced by the pipeline (as fast as inference takes frames). Faults, from a seeded plan per frame:
poisoned recognizer outputs (NaN, out of range), engine exceptions (ONNX Runtime failing on the batch), engine
hangs past the deadline, bad frames, camera frame-id gaps and source silences; and, every --event-every frames,
one harness event from a shuffled cycle: the broadcast subscriber or the actuator receiver stalled (stops
reading) or vanished (socket closed, reconnected later), a valid reload (a threshold, or another recognizer
file) or a hostile one (an alias bomb, deep nesting, a truncated model, a restart-only change, binary garbage),
each by rewriting the config file and sending SIGHUP.

Consumers: a real ZeroMQ SUB on the broadcast stream and a real PULL on the actuator channel (the PLC gateway's
socket options), each in its own thread, decoding and checking every message.

What is checked (a violation fails the run, exit status 1):
- every verdict: its camera frame id and camera_drops_before are the plan's for its seq; a frame whose fault makes
  inspection impossible (nan, range, raise, hang, bad_frame), or that shows a defect, is never a pass; its
  config_hash is one of the valid configs the harness wrote (never a refused one); one run id;
- at each consumer: seq strictly increasing; a gap only within EXPLAIN_S after the harness stalled or vanished
  that consumer (a slow SUB legitimately loses what overflows the high-water marks; the daemon cannot know);
  the first verdict is seq 0 (the source waits until both consumers are connected);
- the daemon's Prometheus counters, scraped from its real endpoint once the run is quiescent:
  frames_acquired = --frames; verdicts + verdicts_dropped = acquired; each fail-safe reason's verdicts equal
  frames_dropped of that cause (when nothing was dropped on the way out); camera_dropped_frames = the plan's
  gaps; per (result, reason) the SUB's count is at most the daemon's and the differences sum to what the SUB
  missed; at the PULL: received + missed = acquired, missed >= undelivered (+ any other actuator non-delivery
  counter, e.g. stale), and what is missed beyond that happened only around a vanished receiver (messages in
  the closed socket's queues, reported as lost_on_vanish); reloads ok = valid reloads sent, invalid + failed =
  hostile ones sent; the stop event's published = verdicts and actuator_sent + actuator_undelivered = published;
- the daemon stays up until SIGTERM and exits 0.

Reasons are not hard-coded per fault: the report shows, per injected kind, which reasons its frames got (e.g. a
NaN output is `error` or `bad_output` depending on the daemon), and reconciles the daemon's counts per reason
against what the consumers received. RSS of the daemon process (/proc) is sampled every --rss-every-s seconds;
the growth after warm-up is fitted per 100k frames (target < 5 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import zmq

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests", ROOT / "tools"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from soak_faults import (  # noqa: E402
    DEFAULT_WEIGHTS,
    IMPOSSIBLE,
    KIND_NAMES,
    PLAN_ENV,
    POISON,
    Plan,
    PlanSpec,
)

CONSUMER_EVENTS = ("sub_stall", "sub_vanish", "pull_stall", "pull_vanish")
VALID_RELOADS = ("valid_threshold", "valid_model")
HOSTILE_RELOADS = ("alias_bomb", "deep_nesting", "truncated_model", "restart_only", "garbage")
EXPLAIN_S = 5.0  # a gap seen this long after a stall or reconnect ended is put down to it
TOPIC = "soak/cam"
INSPECTED = ("ok", "defect")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (metric name, sorted labels) -> value


# ---------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    """The daemon's real exporter: {(name, sorted labels): value} for inspector_ samples."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: Samples = {}
    for line in text.splitlines():
        if not line.startswith("inspector_") or "_created" in line.split(" ", 1)[0]:
            continue
        key, value = line.rsplit(" ", 1)
        m = re.match(r"([a-zA-Z_:]+)(\{.*\})?$", key)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
            out[(m.group(1), labels)] = float(value)
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    s = 0.0
    for (n, lab), value in samples.items():
        if n == name and all(dict(lab).get(k) == v for k, v in labels.items()):
            s += value
    return s


def by_label(samples: Samples, name: str, *keys: str) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for (n, lab), value in samples.items():
        if n == name:
            d = dict(lab)
            k = tuple(d.get(x, "") for x in keys)
            out[k if len(keys) > 1 else k[0]] = out.get(k if len(keys) > 1 else k[0], 0.0) + value
    return out


def daemon_counts(m: Samples) -> dict[str, Any]:
    """The daemon's counters from one scrape, by the labels the reconciliation needs."""
    verdicts = {k: int(x) for k, x in by_label(m, "inspector_verdicts_total", "result", "reason").items() if x}
    return {
        "frames_acquired": int(total(m, "inspector_frames_acquired_total")),
        "verdicts": verdicts,
        "published": sum(verdicts.values()),
        "verdicts_dropped": int(total(m, "inspector_verdicts_dropped_total")),
        "frames_dropped": {k: int(x) for k, x in by_label(m, "inspector_frames_dropped_total", "cause").items() if x},
        "camera_dropped_frames": int(total(m, "inspector_camera_dropped_frames_total")),
        "reloads": {k: int(x) for k, x in by_label(m, "inspector_reloads_total", "result").items() if x},
        # Every actuator counter is a verdict that did not reach a receiver (undelivered; stale, where counted).
        # Each summed over its labels (cause, line, camera). It was one entry per series, so the last series read
        # (a cause with 0) hid the others: a 1M-frame run reported 0 undelivered, and every verdict missed at
        # the receiver passed as lost on a vanish.
        "actuator_not_delivered": {
            name: int(total(m, name))
            for name in sorted({n for n, _ in m})
            if name.startswith("inspector_actuator_") and name.endswith("_total")
        },
        "actuator_undelivered_by_cause": {
            k: int(x) for k, x in by_label(m, "inspector_actuator_undelivered_total", "cause").items() if x
        },
    }


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- checker


class Checker:
    """Checks each verdict against the plan; collects violations (shared by the consumer threads)."""

    MAX_KEPT = 200

    def __init__(self, plan: Plan):
        self.plan = plan
        self.valid_hashes: set[str] = set()
        self.run_ids: set[str] = set()
        self.violations: list[str] = []
        self.violation_count: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.impossible = np.array([KIND_NAMES[k] in IMPOSSIBLE for k in range(len(KIND_NAMES))])

    def violate(self, what: str, detail: str) -> None:
        with self._lock:
            self.violation_count[what] += 1
            if len(self.violations) < self.MAX_KEPT:
                self.violations.append(f"{what}: {detail}")

    def verdict(self, who: str, msg: dict[str, Any], tally: Counter[tuple[str, str]] | None) -> None:
        plan = self.plan
        s = msg["seq"]
        if msg["run_id"] not in self.run_ids:
            with self._lock:
                self.run_ids.add(msg["run_id"])
                if len(self.run_ids) > 1:
                    self.violation_count["second run id (the daemon restarted)"] += 1
        if not 0 <= s < plan.spec.frames:
            self.violate(f"{who}: seq outside the run", f"seq {s}")
            return
        kind = int(plan.kind[s])
        result, reason = msg["result"], msg["reason"]
        if result == "pass" and (self.impossible[kind] or plan.defect[s]):
            what = KIND_NAMES[kind] if self.impossible[kind] else "defect shown"
            self.violate(f"{who}: pass for a frame that cannot pass ({what})", f"seq {s} reason {reason}")
        if (reason == "ok") != (result == "pass" and reason in INSPECTED) and reason in INSPECTED:
            self.violate(f"{who}: result and reason disagree", f"seq {s} {result}/{reason}")
        fid, drops = msg["camera_frame_id"], msg["camera_drops_before"]
        # The source delivers every planned frame (late, at a free-running rate the box cannot keep), so the
        # camera frame id and the drops before it are the plan's exactly, paced or not.
        if fid != plan.frame_id[s] or drops != plan.gap[s]:
            self.violate(
                f"{who}: camera frame id or drops differ from the plan",
                f"seq {s}: id {fid} drops {drops}, plan {plan.frame_id[s]} {plan.gap[s]}",
            )
        if msg["config_hash"] not in self.valid_hashes:
            self.violate(f"{who}: verdict under a config never made valid", f"seq {s} {msg['config_hash']}")
        if tally is not None:
            tally[(KIND_NAMES[kind] if kind else ("defect shown" if plan.defect[s] else "none"), reason)] += 1


# --------------------------------------------------------------------------------------------- consumers


@dataclass
class Gap:
    run_id: str
    after: int  # last seq received before the gap (-1: none)
    first: int  # first seq received after it
    explained_by: str | None

    @property
    def missing(self) -> int:
        return self.first - self.after - 1


@dataclass
class ConsumerStats:
    received: int = 0
    by_result_reason: Counter[tuple[str, str]] = field(default_factory=Counter)
    gaps: list[Gap] = field(default_factory=list)
    stalls: int = 0
    vanishes: int = 0
    events: Counter[str] = field(default_factory=Counter)
    last_event: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_seq: int | None = None
    last_seq: dict[str, int] = field(default_factory=dict)
    last_verdict_at: float = 0.0


class Consumer(threading.Thread):
    """A real SUB (broadcast) or PULL (actuator) socket the harness can stall and make vanish."""

    def __init__(self, kind: int, endpoint: str, checker: Checker, rcvhwm: int, tally: bool):
        super().__init__(name="sub" if kind == zmq.SUB else "pull", daemon=True)
        self.kind = kind
        self.endpoint = endpoint
        self.checker = checker
        self.rcvhwm = rcvhwm
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.stats = ConsumerStats()
        self.tally: Counter[tuple[str, str]] | None = Counter() if tally else None
        self.stop_flag = threading.Event()
        self.connected = threading.Event()
        self._stalled_until = 0.0
        self._vanished_until = 0.0
        self._explain: tuple[str, float] | None = None  # (cause, until): gaps seen before `until` are its
        self.busy = False  # stalled or vanished right now

    def _socket(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(self.kind)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        if self.kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, f"{TOPIC}/".encode())
        else:  # the PLC gateway's intake options (inspector/gateway/intake.py): keepalive, no heartbeats
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
        sock.connect(self.endpoint)
        return sock

    def stall(self, seconds: float) -> None:
        self.busy = True
        self.stats.stalls += 1
        self._stalled_until = time.monotonic() + seconds

    def vanish(self, seconds: float) -> None:
        self.busy = True
        self.stats.vanishes += 1
        self._vanished_until = time.monotonic() + seconds

    def recover(self) -> None:
        """End a stall or an absence now (before the run's end)."""
        now = time.monotonic()
        self._stalled_until = min(self._stalled_until, now)
        self._vanished_until = min(self._vanished_until, now)

    def run(self) -> None:
        sock: zmq.Socket[bytes] | None = self._socket()
        self.connected.set()
        decode = orjson.loads
        while not self.stop_flag.is_set():
            now = time.monotonic()
            if now < self._vanished_until:
                if sock is not None:
                    sock.close(0)  # abrupt: whatever is queued in it is lost
                    sock = None
                time.sleep(0.02)
                continue
            if sock is None:
                sock = self._socket()
                self._explain = ("vanish", float("inf"))  # until the first message after reconnecting
                self._vanished_until = 0.0
                self.busy = False
            if now < self._stalled_until:
                time.sleep(min(0.02, self._stalled_until - now))
                continue
            if self._stalled_until:
                self._stalled_until = 0.0
                self._explain = ("stall", now + EXPLAIN_S)
                self.busy = False
            if not sock.poll(50):
                continue
            for _ in range(512):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(decode(frames[-1]))
                if self._stalled_until or self._vanished_until:
                    break
        if sock is not None:
            sock.close(0)
        self.ctx.term()

    def _handle(self, msg: dict[str, Any]) -> None:
        st = self.stats
        if msg.get("schema", "").startswith("inspector.event/"):
            st.events[msg["kind"]] += 1
            st.last_event[msg["kind"]] = msg
            return
        st.last_verdict_at = time.monotonic()
        run_id, s = msg["run_id"], msg["seq"]
        last = st.last_seq.get(run_id, -1)
        if st.first_seq is None:
            st.first_seq = s
        explain = self._explain
        cause = None
        if explain is not None:
            cause = explain[0] if time.monotonic() <= explain[1] else None
            if explain[1] == float("inf"):  # a reconnect explains what its first message shows, no more
                self._explain = None
        if s <= last:
            self.checker.violate(f"{self.name}: seq not increasing", f"seq {s} after {last}")
        elif s != last + 1:
            st.gaps.append(Gap(run_id, last, s, cause))
            if cause is None and self.kind == zmq.SUB:
                # The daemon cannot know what a PUB dropped: a SUB gap the harness did not cause is a loss. At the
                # PULL, the daemon counts what it could not hand over; the totals are reconciled at the end.
                self.checker.violate(f"{self.name}: gap with no stall or vanish to explain it", f"{last} -> {s}")
        st.last_seq[run_id] = max(last, s)
        st.received += 1
        st.by_result_reason[(msg["result"], msg["reason"])] += 1
        self.checker.verdict(self.name, msg, self.tally)

    def missing(self) -> int:
        return sum(g.missing for g in self.stats.gaps)


# ------------------------------------------------------------------------------------------------ configs


def config_text(d: dict[str, Any]) -> str:
    return f"""version: 1
line: {{name: soak, camera: cam}}
source:
  kind: synthetic
  width: 64
  height: 64
  pixel_format: mono8
  rate_hz: {d["rate"]}
  pool_size: 1
models:
  backend: onnxruntime
  recognizer: {{path: {d["recognizer"]}}}
  segmenter: {{path: {d["segmenter"]}}}
  segmenter_mode: gated
  onnxruntime: {{intra_op_threads: 1, inter_op_threads: 1}}
pipeline:
  ring_slots: 32
  batch_size: {d["batch"]}
  deadline_ms: {d["deadline_ms"]}
  warmup_runs: 1
decision:
  block_threshold: {d["threshold"]}
  pixel_threshold: 0.5
  min_area_px: 3
publish:
  heartbeat_ms: 500
  broadcast: {{bind: "tcp://127.0.0.1:{d["pub_port"]}", sndhwm: 1000, linger_ms: 1000}}
  actuator: {{bind: "tcp://127.0.0.1:{d["push_port"]}", sndhwm: 100, linger_ms: 1000}}
metrics: {{enabled: true, bind: 127.0.0.1, port: {d["metrics_port"]}}}
{d.get("health", "")}"""


def health_section() -> str:
    """Where the daemon declares an engine unhealthy after repeated faulty frames (health:, sticky until a
    restart), a budget the soak's fault rate never reaches: the soak measures how each faulty frame is handled
    over a long run, not the trip itself (tests/test_outputs.py covers that)."""
    from inspector.config import Config

    if "health" not in Config.model_fields:
        return ""
    return "health: {max_faulty_frames: 100000, window_s: 1}\n"


def alias_bomb(levels: int, width: int) -> str:
    lines = ["bomb:", "  a0: &a0 [x]"]
    for i in range(1, levels + 1):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- harness


@dataclass
class Options:
    frames: int = 1_000_000
    seed: int = 0
    fault_rate: float = 0.01
    defect_rate: float = 0.05
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    events: tuple[str, ...] = CONSUMER_EVENTS + VALID_RELOADS + HOSTILE_RELOADS
    event_every: int = 5000
    stall_max_s: float = 4.0
    hang_s: float = 0.6
    silence_s: float = 0.3
    deadline_ms: float = 300.0
    batch: int = 4
    rate: float | None = None  # None: paced by the pipeline
    sub_rcvhwm: int = 20000
    pull_rcvhwm: int = 1000
    bomb: tuple[int, int] = (5, 10)
    deep: int = 1000
    warmup: int | None = None
    rss_every_s: float = 2.0
    stall_timeout_s: float = 180.0  # no progress for this long: the run is declared stuck
    workdir: Path | None = None
    quiet: bool = False


class Harness:
    def __init__(self, opt: Options):
        self.opt = opt
        self.rng = random.Random(opt.seed)
        self.work = Path(opt.workdir or tempfile.mkdtemp(prefix="soak-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.spec = PlanSpec(
            seed=opt.seed,
            frames=opt.frames,
            fault_rate=opt.fault_rate,
            defect_rate=opt.defect_rate,
            weights=opt.weights,
            hang_s=opt.hang_s,
            silence_s=opt.silence_s,
            gate_file=str(self.work / "gate"),
        )
        self.plan = Plan.build(self.spec)
        self.checker = Checker(self.plan)
        self.ports = {"pub_port": free_port(), "push_port": free_port(), "metrics_port": free_port()}
        self.cfg_path = self.work / "line.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.reloads_sent: Counter[str] = Counter()
        self.reload_results: dict[str, Counter[str]] = {}
        self.events_done: Counter[str] = Counter()
        self.rss: list[tuple[int, int, float]] = []  # (acquired, kB, monotonic)
        self.notes: list[str] = []
        self.died: str | None = None
        self._cycle: list[str] = []
        self.rss_by_event: dict[str, list[int]] = {}  # RSS change (kB) across each reload, by kind
        self.rss_steps: list[tuple[int, int]] = []  # (frames acquired, RSS change in kB) of each reload
        self._acquired = 0
        self._next_event = opt.event_every

    # ---------------------------------------------------------------------------------------- setup

    def _models(self) -> None:
        from tiny_models import write_tiny_recognizer, write_tiny_segmenter

        m = self.work / "models"
        m.mkdir(exist_ok=True)
        for name in ("recognizer_a", "recognizer_b"):  # two files: a reload to the other one loads a new model
            write_tiny_recognizer(m / f"{name}.onnx", poison=POISON, max_batch=16)
        write_tiny_segmenter(m / "segmenter.onnx", max_batch=16)
        # A truncated model whose manifest carries its (truncated) hash: the load itself must fail.
        bad = m / "truncated.onnx"
        data = (m / "recognizer_a.onnx").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        from inspector.manifest import read_manifest, sha256_file, write_manifest

        man = read_manifest(m / "recognizer_a.onnx").model_copy(update={"file": bad.name, "sha256": sha256_file(bad)})
        write_manifest(bad, man)
        self.current = {
            **self.ports,
            "rate": "null" if self.opt.rate is None else self.opt.rate,
            "recognizer": str(m / "recognizer_a.onnx"),
            "segmenter": str(m / "segmenter.onnx"),
            "batch": self.opt.batch,
            "deadline_ms": self.opt.deadline_ms,
            "threshold": 0.5,
            "health": health_section(),
        }

    def _write(self, text: str | bytes) -> None:
        tmp = self.cfg_path.with_suffix(".tmp")
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text)
        os.replace(tmp, self.cfg_path)

    def _valid(self, d: dict[str, Any]) -> None:
        from inspector.config import parse_config

        text = config_text(d)
        self.checker.valid_hashes.add(parse_config(text, str(self.cfg_path)).config_hash())
        self._write(text)

    def start(self) -> None:
        self._models()
        self._valid(self.current)
        (self.work / "plan.json").write_text(self.spec.to_json())
        env = {**os.environ, PLAN_ENV: str(self.work / "plan.json"), "PYTHONPATH": str(ROOT)}
        self.log = open(self.work / "daemon.log", "wb")  # noqa: SIM115 (closed in finish)
        self.sub = Consumer(
            zmq.SUB, f"tcp://127.0.0.1:{self.ports['pub_port']}", self.checker, self.opt.sub_rcvhwm, tally=True
        )
        self.pull = Consumer(
            zmq.PULL, f"tcp://127.0.0.1:{self.ports['push_port']}", self.checker, self.opt.pull_rcvhwm, tally=False
        )
        self.sub.start()
        self.pull.start()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "soak_faults.py"), "--config", str(self.cfg_path)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        # The source holds its first frame until both consumers are connected (the SUB has an event, the
        # daemon counts the PULL as a receiver), so that seq 0 reaches both.
        end = time.monotonic() + 300
        while True:
            self._alive("start-up")
            try:
                m = scrape(self.ports["metrics_port"])
            except OSError:
                m = {}
            if m and self.sub.stats.events and total(m, "inspector_actuator_connected") >= 1:
                break
            if time.monotonic() > end:
                raise RuntimeError("the daemon or the consumers did not come up within 300 s; see daemon.log")
            time.sleep(0.1)
        self.t0 = time.monotonic()
        self.cpu0 = cpu_s(self.proc.pid) or 0.0
        self._open_gate(self._next_event if self.opt.events else self.opt.frames)

    def _scrape(self, when: str) -> Samples:
        """A scrape of the daemon's exporter; a daemon that died meanwhile is reported as such."""
        end = time.monotonic() + 30
        while True:
            try:
                return scrape(self.ports["metrics_port"])
            except OSError as exc:
                time.sleep(0.2)
                self._alive(when)
                if time.monotonic() > end:
                    raise RuntimeError(f"the daemon's metrics endpoint did not answer for 30 s ({exc})") from None

    def _open_gate(self, frames: int) -> None:
        """Let the source deliver frames up to this count (written whole: the source never reads half a number)."""
        assert self.spec.gate_file is not None
        tmp = Path(self.spec.gate_file + ".tmp")
        tmp.write_text(str(min(frames, self.opt.frames)))
        os.replace(tmp, self.spec.gate_file)

    def _alive(self, when: str) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            self.died = f"the daemon exited with status {rc} during {when} (see {self.work / 'daemon.log'})"
            raise RuntimeError(self.died)

    # ------------------------------------------------------------------------------------------ events

    def _event(self, name: str) -> bool:
        """Do one harness event; False when its consumer is still stalled or away from the last one."""
        d = self.rng.uniform(0.2, self.opt.stall_max_s)
        consumer = self.sub if name.startswith("sub") else self.pull
        if name in CONSUMER_EVENTS:
            if consumer.busy:
                return False
            (consumer.stall if name.endswith("stall") else consumer.vanish)(d)
        else:
            assert self.proc is not None
            before = rss_kb(self.proc.pid)
            self._reload(name)
            after = rss_kb(self.proc.pid)
            if before is not None and after is not None:
                self.rss_by_event.setdefault(name, []).append(after - before)
                self.rss_steps.append((self._acquired, after - before))
        self.events_done[name] += 1
        return True

    def _write_reload(self, name: str, valid_text: str) -> None:
        """The config file a reload of this kind reads (valid ones also become the running config)."""
        if name == "valid_threshold":
            self.current["threshold"] = 0.6 if self.current["threshold"] == 0.5 else 0.5
            self._valid(self.current)
        elif name == "valid_model":
            a, b = (str(self.work / "models" / f"recognizer_{x}.onnx") for x in "ab")
            self.current["recognizer"] = b if self.current["recognizer"] == a else a
            self._valid(self.current)
        elif name == "alias_bomb":
            self._write(valid_text + alias_bomb(*self.opt.bomb))
        elif name == "deep_nesting":
            self._write(valid_text + "deep: " + "[" * self.opt.deep + "]" * self.opt.deep + "\n")
        elif name == "truncated_model":
            self._write(config_text({**self.current, "recognizer": str(self.work / "models" / "truncated.onnx")}))
        elif name == "restart_only":
            self._write(valid_text.replace("ring_slots: 32", "ring_slots: 16"))
        elif name == "garbage":
            self._write(bytes(self.rng.getrandbits(8) for _ in range(4096)))

    def _reload(self, name: str) -> None:
        valid_text = config_text(self.current)
        self._write_reload(name, valid_text)
        before = self._reload_counts()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 300
        while True:
            after = self._reload_counts()
            if sum(after.values()) > sum(before.values()):
                break
            if time.monotonic() > end:
                self.checker.violate("reload not answered within 300 s", name)
                break
            time.sleep(0.05)
        result = next((r for r in after if after[r] > before.get(r, 0)), "none")
        self.reloads_sent["valid" if name in VALID_RELOADS else "hostile"] += 1
        self.reload_results.setdefault(name, Counter())[result] += 1
        if name in VALID_RELOADS and result != "ok":
            self.checker.violate("a valid reload was not applied", f"{name}: {result}")
        if name in HOSTILE_RELOADS:
            if result == "ok":
                self.checker.violate("a hostile reload was applied", name)
            self._write(valid_text)  # the running config, for the next reload and for a restart

    def _reload_counts(self) -> dict[str, float]:
        return {str(k): v for k, v in by_label(self._scrape("a reload"), "inspector_reloads_total", "result").items()}

    # --------------------------------------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        opt = self.opt
        self.start()
        assert self.proc is not None
        warmup = opt.warmup if opt.warmup is not None else min(100_000, opt.frames // 5)
        last_progress = (0, time.monotonic())
        last_print = last_rss = 0.0
        try:
            while True:
                self._alive("the run")
                m = self._scrape("the run")
                acquired = self._acquired = int(total(m, "inspector_frames_acquired_total"))
                decided = int(total(m, "inspector_verdicts_total") + total(m, "inspector_verdicts_dropped_total"))
                now = time.monotonic()
                if now - last_rss >= opt.rss_every_s:
                    self._sample_rss(acquired)
                    last_rss = now
                if acquired > last_progress[0]:
                    last_progress = (acquired, now)
                elif now - last_progress[1] > opt.stall_timeout_s and acquired < opt.frames:
                    raise RuntimeError(f"no frame acquired for {opt.stall_timeout_s:.0f} s at {acquired}")
                if not opt.quiet and now - last_print >= 5:
                    last_print = now
                    self._progress(acquired)
                if acquired >= opt.frames and decided >= opt.frames:
                    break
                self._schedule(acquired)
                time.sleep(0.2)
            self.elapsed = time.monotonic() - self.t0
            self.cpu = (cpu_s(self.proc.pid) or 0.0) - self.cpu0
            self._sample_rss(opt.frames)
            if not opt.quiet:
                self._progress(opt.frames)
            self._settle()
            final = self._scrape("the end")
            rc = self._stop()
        finally:
            self._cleanup()
        return self._report(final, rc, warmup)

    def _sample_rss(self, acquired: int) -> None:
        assert self.proc is not None
        kb = rss_kb(self.proc.pid)
        if kb is not None:
            self.rss.append((acquired, kb, time.monotonic()))

    def _schedule(self, acquired: int) -> None:
        """One harness event every --event-every frames, from a shuffled cycle of all of them, none in the last
        half interval. The source waits at each event's frame count until the harness has started it."""
        opt = self.opt
        if not opt.events or acquired < self._next_event:
            return
        if self._next_event >= opt.frames - opt.event_every // 2:
            self._open_gate(opt.frames)
            return
        if not self._cycle:
            self._cycle = list(opt.events)
            self.rng.shuffle(self._cycle)
        self._next_event += opt.event_every
        self._open_gate(self._next_event)  # frames flow while this event runs
        name = self._cycle.pop()
        if not self._event(name):
            self._cycle.append(name)  # its consumer is still busy: retried at the next event

    def _progress(self, acquired: int) -> None:
        el = time.monotonic() - self.t0
        rate = acquired / el if el > 0 else 0.0
        eta = (self.opt.frames - acquired) / rate if rate > 0 else float("inf")
        rss = self.rss[-1][1] / 1024 if self.rss else 0.0
        print(
            f"[soak] {acquired:>9,}/{self.opt.frames:,} frames  {rate:7.0f} fps  ETA {eta / 60:6.1f} min  "
            f"RSS {rss:6.1f} MB  events {sum(self.events_done.values())}  "
            f"violations {sum(self.checker.violation_count.values())}",
            flush=True,
        )

    def _settle(self) -> None:
        """End every stall and absence; wait until both consumers have everything they are going to get."""
        for c in (self.sub, self.pull):
            c.recover()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            quiet = all(time.monotonic() - c.stats.last_verdict_at > 2.0 and not c.busy for c in (self.sub, self.pull))
            hb = self.sub.stats.last_event.get("heartbeat", {})
            if quiet and hb.get("last_seq") is not None and hb["last_seq"] >= self.opt.frames - 1:
                return
            time.sleep(0.2)
        self.notes.append("consumers did not settle within 120 s")

    def _stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            self.checker.violate("the daemon did not stop within 120 s of SIGTERM", "killed")
        end = time.monotonic() + 10
        while "stop" not in self.sub.stats.events and time.monotonic() < end:
            time.sleep(0.05)
        return rc

    def _cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for c in (getattr(self, "sub", None), getattr(self, "pull", None)):
            if c is not None:
                c.stop_flag.set()
                c.join(10)
        if hasattr(self, "log"):
            self.log.close()

    # ----------------------------------------------------------------------------------------- report

    def _report(self, m: Samples, rc: int, warmup: int) -> dict[str, Any]:
        opt, chk, sub = self.opt, self.checker, self.sub
        d = daemon_counts(m)
        self._check_counters(d)
        self._check_stop_and_reloads(d, rc)
        by_kind: dict[str, dict[str, int]] = {}
        assert sub.tally is not None
        for (kind, reason), n in sorted(sub.tally.items()):
            by_kind.setdefault(kind, {})[reason] = n
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        subscriber = self._check_subscriber(d)
        receiver = self._check_receiver(d)
        return {
            "ok": not chk.violation_count,
            "violations": dict(chk.violation_count),
            "violation_examples": chk.violations[:50],
            "notes": self.notes,
            "commit": git.stdout.strip(),
            "options": {
                k: (list(x) if isinstance(x, tuple) else str(x) if isinstance(x, Path) else x)
                for k, x in opt.__dict__.items()
            },
            "frames": opt.frames,
            "elapsed_s": round(self.elapsed, 1),
            "fps": round(opt.frames / self.elapsed, 1),
            "daemon_cpu_s": round(self.cpu, 1),
            "daemon_exit_status": rc,
            "injected": self.plan.counts() | {"defect_shown": int(self.plan.defect.sum())},
            "camera_frames_lost_injected": int(self.plan.gap.sum()),
            "harness_events": dict(self.events_done),
            "reload_results": {k: dict(c) for k, c in self.reload_results.items()},
            "daemon": {
                **{k: x for k, x in d.items() if k != "verdicts"},
                "verdicts": {f"{r}/{q}": n for (r, q), n in sorted(d["verdicts"].items())},
            },
            "subscriber": subscriber,
            "actuator_receiver": receiver,
            "reasons_by_injected_kind": by_kind,
            "rss": self._rss_figures(warmup),
            "rss_change_across_reloads_mb": {
                k: {"count": len(x), "total": round(sum(x) / 1024, 1), "max": round(max(x) / 1024, 1)}
                for k, x in sorted(self.rss_by_event.items())
            },
            "workdir": str(self.work),
        }

    def _check_counters(self, d: dict[str, Any]) -> None:
        """The daemon's own counters against each other and against the plan."""
        v = self.checker.violate
        acquired, published, vdropped = d["frames_acquired"], d["published"], d["verdicts_dropped"]
        if acquired != self.opt.frames:
            v("frames_acquired differs from the frames the source delivered", f"{acquired} != {self.opt.frames}")
        if published + vdropped != acquired:
            v("verdicts + verdicts_dropped != frames_acquired", f"{published} + {vdropped} != {acquired}")
        failsafe: Counter[str] = Counter()
        for (_, reason), n in d["verdicts"].items():
            if reason not in INSPECTED:
                failsafe[reason] += n
        fdropped = d["frames_dropped"]
        for cause in set(fdropped) | set(failsafe):
            got, counted = failsafe.get(cause, 0), fdropped.get(cause, 0)
            # Exact when nothing was dropped on the way out; otherwise some fail-safe verdicts never left.
            if (got != counted) if vdropped == 0 else (got > counted):
                v("fail-safe verdicts of a reason != frames_dropped of that cause", f"{cause}: {got} vs {counted}")
        planned = int(self.plan.gap.sum())
        if d["camera_dropped_frames"] != planned:
            v("camera_dropped_frames != the plan's gaps", f"{d['camera_dropped_frames']} != {planned}")

    def _check_subscriber(self, d: dict[str, Any]) -> dict[str, Any]:
        """What the SUB got per (result, reason) against the daemon's counts, and what it missed."""
        sub, v = self.sub, self.checker.violate
        tail = max(0, self.opt.frames - 1 - max(sub.stats.last_seq.values(), default=-1))
        missing = sub.missing() + tail
        if sub.stats.received + missing != self.opt.frames:
            v("subscriber: received + missed != frames", f"{sub.stats.received} + {missing}")
        diff = 0
        for key, daemon_n in d["verdicts"].items():
            n = sub.stats.by_result_reason.get(key, 0)
            diff += daemon_n - n
        for key, n in sub.stats.by_result_reason.items():
            if n > d["verdicts"].get(key, 0):
                v("subscriber got more verdicts of a kind than the daemon counted", f"{key}: {n}")
                diff = -1
        if diff != missing - d["verdicts_dropped"]:
            v("subscriber: the daemon's counts minus received != missed", f"{diff} != {missing} - dropped")
        if tail:
            v("subscriber: the last verdicts never arrived", f"{tail} missing at the end")
        if sub.stats.first_seq not in (0, None):
            v("sub: the first verdict received is not seq 0", str(sub.stats.first_seq))
        return {
            "received": sub.stats.received,
            "missed": missing,
            "stalls": sub.stats.stalls,
            "vanishes": sub.stats.vanishes,
            "gaps": len(sub.stats.gaps),
            "gaps_by_cause": dict(Counter(str(g.explained_by) for g in sub.stats.gaps)),
            "unexplained_gaps": sum(g.explained_by is None for g in sub.stats.gaps),
            "events": dict(sub.stats.events),
        }

    def _check_receiver(self, d: dict[str, Any]) -> dict[str, Any]:
        """The PULL: received + missed = frames; missed = what the daemon counted undelivered (+ dropped on the
        way out) + what was queued in a receiver's socket when it vanished."""
        pull, v = self.pull, self.checker.violate
        undelivered = sum(d["actuator_not_delivered"].values())
        tail = max(0, self.opt.frames - 1 - max(pull.stats.last_seq.values(), default=-1))
        missing = pull.missing() + tail
        lost_on_vanish = missing - undelivered - d["verdicts_dropped"]
        if pull.stats.received + missing != self.opt.frames:
            v("actuator receiver: received + missed != frames", f"{pull.stats.received} + {missing}")
        if lost_on_vanish < 0:
            v("actuator receiver: fewer missed than the daemon counted undelivered", f"{missing} < {undelivered}")
        if lost_on_vanish > 0 and pull.stats.vanishes == 0:
            v("actuator receiver: verdicts lost with no vanished receiver to explain it", str(lost_on_vanish))
        if pull.stats.first_seq not in (0, None):
            v("pull: the first verdict received is not seq 0", str(pull.stats.first_seq))
        return {
            "received": pull.stats.received,
            "missed": missing,
            "undelivered_counted": undelivered,
            "lost_on_vanish": lost_on_vanish,
            "stalls": pull.stats.stalls,
            "vanishes": pull.stats.vanishes,
            "gaps": len(pull.stats.gaps),
            "gaps_by_cause": dict(Counter(str(g.explained_by) for g in pull.stats.gaps)),
            # The verdicts missing at each reconnect after a vanish: undelivered while nobody was connected, plus
            # what sat in the closed socket's queues (lost_on_vanish over all of them).
            "missed_per_vanish_gap": sorted(g.missing for g in pull.stats.gaps if g.explained_by == "vanish"),
        }

    def _check_stop_and_reloads(self, d: dict[str, Any], rc: int) -> None:
        v = self.checker.violate
        stop = self.sub.stats.last_event.get("stop")
        if stop is None:
            self.notes.append("the subscriber did not see the stop event")
        else:
            if stop.get("published") != d["published"]:
                v("stop event: published != the daemon's verdict count", f"{stop.get('published')}")
            sent, und = stop.get("actuator_sent"), stop.get("actuator_undelivered")
            if sent is not None and und is not None and sent + und != d["published"]:
                v("stop event: actuator_sent + actuator_undelivered != published", f"{sent} + {und}")
        reloads = d["reloads"]
        if reloads.get("ok", 0) != self.reloads_sent["valid"]:
            v("reloads ok != valid reloads sent", f"{reloads.get('ok', 0)} != {self.reloads_sent['valid']}")
        if reloads.get("invalid", 0) + reloads.get("failed", 0) != self.reloads_sent["hostile"]:
            v("reloads invalid + failed != hostile reloads sent", f"{reloads} vs {self.reloads_sent['hostile']}")
        if rc != 0:
            v("the daemon's exit status after SIGTERM is not 0", str(rc))
        if len(self.checker.run_ids) > 1:
            v("more than one run id", str(sorted(self.checker.run_ids)))

    def _rss_figures(self, warmup: int) -> dict[str, Any]:
        """RSS after warm-up: the growth fitted per 100k frames, over everything and with the steps across
        reloads taken out (a reload's memory is the reload's, not the frames'; it is reported per reload kind)."""
        pts = [(a, kb) for a, kb, _ in self.rss if a >= warmup]
        out: dict[str, Any] = {"warmup_frames": warmup, "samples": len(pts)}
        if self.rss:
            out["start_mb"] = round(self.rss[0][1] / 1024, 1)
            out["max_mb"] = round(max(kb for _, kb, _ in self.rss) / 1024, 1)
        out["samples_frames_kb"] = [(a, kb) for a, kb, _ in self.rss[:: max(1, len(self.rss) // 200)]]
        if len(pts) < 3 or pts[-1][0] <= pts[0][0]:
            return out
        a = np.array([p[0] for p in pts], float)
        kb = np.array([p[1] for p in pts], float)
        steps = np.array([sum(d for at, d in self.rss_steps if at <= x) for x in a], float)
        slope = float(np.polyfit(a, kb, 1)[0]) * 100_000 / 1024
        between = float(np.polyfit(a, kb - steps, 1)[0]) * 100_000 / 1024
        out.update(
            after_warmup_mb=round(kb[0] / 1024, 1),
            end_mb=round(kb[-1] / 1024, 1),
            growth_mb=round((kb[-1] - kb[0]) / 1024, 2),
            growth_across_reloads_mb=round((steps[-1] - steps[0]) / 1024, 2),
            frames_measured=int(a[-1] - a[0]),
            fitted_mb_per_100k_frames=round(slope, 3),
            fitted_mb_per_100k_frames_between_reloads=round(between, 3),
            within_target_5mb_per_100k=bool(between < 5.0),
        )
        return out


# ------------------------------------------------------------------------------------------------ command


def parse_args(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description="Soak the real daemon with random faults and reconcile every verdict and counter.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = Options()
    p.add_argument("--frames", type=int, default=d.frames, help="frames the source delivers")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the fault plan and of the event order")
    p.add_argument("--fault-rate", type=float, default=d.fault_rate, help="fraction of frames with a fault")
    p.add_argument("--defect-rate", type=float, default=d.defect_rate, help="fraction of frames showing a defect")
    p.add_argument(
        "--faults",
        default=",".join(k for k in DEFAULT_WEIGHTS),
        help=f"frame fault kinds to inject, comma-separated (of {', '.join(DEFAULT_WEIGHTS)})",
    )
    p.add_argument(
        "--events",
        default=",".join(d.events),
        help="harness events, comma-separated: consumer faults and valid/hostile reloads ('' = none)",
    )
    p.add_argument("--event-every", type=int, default=d.event_every, help="frames between two harness events")
    p.add_argument("--stall-max-s", type=float, default=d.stall_max_s, help="longest consumer stall or absence")
    p.add_argument("--hang-s", type=float, default=d.hang_s, help="how long a hung inference sleeps")
    p.add_argument("--deadline-ms", type=float, default=d.deadline_ms, help="pipeline.deadline_ms of the line")
    p.add_argument("--rate", type=float, default=None, help="source rate in Hz (default: paced by the pipeline)")
    p.add_argument("--sub-rcvhwm", type=int, default=d.sub_rcvhwm, help="the subscriber's receive high-water mark")
    p.add_argument("--warmup", type=int, default=None, help="frames before RSS is measured (default: 20%%, <=100k)")
    p.add_argument("--workdir", type=Path, help="where models, config, plan and daemon.log go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)
    faults = {k for k in a.faults.split(",") if k}
    unknown = faults - set(DEFAULT_WEIGHTS)
    events = tuple(e for e in a.events.split(",") if e)
    unknown |= set(events) - set(CONSUMER_EVENTS + VALID_RELOADS + HOSTILE_RELOADS)
    if unknown:
        p.error(f"unknown fault or event kinds: {', '.join(sorted(unknown))}")
    opt = Options(
        frames=a.frames,
        seed=a.seed,
        fault_rate=a.fault_rate,
        defect_rate=a.defect_rate,
        weights={k: w for k, w in DEFAULT_WEIGHTS.items() if k in faults},
        events=events,
        event_every=a.event_every,
        stall_max_s=a.stall_max_s,
        hang_s=a.hang_s,
        deadline_ms=a.deadline_ms,
        rate=a.rate,
        sub_rcvhwm=a.sub_rcvhwm,
        warmup=a.warmup,
        workdir=a.workdir,
        quiet=a.quiet,
    )
    return opt, a


def soak(opt: Options, keep: bool = False) -> dict[str, Any]:
    h = Harness(opt)
    try:
        try:
            return h.run()
        except RuntimeError as exc:
            return {
                "ok": False,
                "error": str(exc),
                "violations": dict(h.checker.violation_count),
                "violation_examples": h.checker.violations[:50],
                "harness_events": dict(h.events_done),
                "workdir": str(h.work),
            }
    finally:
        if not keep and opt.workdir is None and h.died is None:
            shutil.rmtree(h.work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    opt, a = parse_args(argv)
    # SIGTERM ends the harness like Ctrl-C: the daemon it started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = soak(opt, keep=a.keep)
    text = json.dumps(report, indent=2, default=str)
    if a.json:
        a.json.write_text(text + "\n")
    summary = {k: report[k] for k in ("ok", "violations", "error", "fps", "rss") if k in report}
    print(json.dumps(summary, indent=2, default=str))
    if report.get("violation_examples"):
        print("first violations:\n  " + "\n  ".join(report["violation_examples"][:20]))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
