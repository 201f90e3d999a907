"""Helpers for the daemon tests: line configs around the tiny models, free ports, a real SUB collector, a real
metrics scrape, test images."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import zmq


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, models: tuple[Path, Path], *, source: str, port: int, extra: str = "") -> Path:
    """A line config: `source` is the YAML of the source section's body (indented by 2)."""
    recognizer, segmenter = models
    path.write_text(
        f"""version: 1
line: {{name: test, camera: cam}}
source:
{source}
models:
  recognizer: {{path: {recognizer}}}
  segmenter: {{path: {segmenter}}}
  onnxruntime: {{intra_op_threads: 1}}
publish:
  broadcast: {{bind: "tcp://127.0.0.1:{port}"}}
  actuator: null
metrics: {{enabled: true, port: 0}}
{extra}"""
    )
    return path


SYNTHETIC = """  kind: synthetic
  width: 128
  height: 128
  rate_hz: {rate}
  pool_size: {pool}"""


def synthetic(rate: float | None = 200.0, pool: int = 8) -> str:
    return SYNTHETIC.format(rate="null" if rate is None else rate, pool=pool)


class Collector:
    """A SUB socket on a daemon's broadcast endpoint, collecting verdicts and events in a thread."""

    def __init__(self, port: int):
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 1_000_000)
        self.sub.setsockopt(zmq.RECONNECT_IVL, 10)
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self.messages: list[dict] = []
        self.first_verdict_at = float("inf")  # monotonic time the first verdict arrived
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() or self.sub.poll(0):
            if not self.sub.poll(20):
                continue
            _, payload = self.sub.recv_multipart()
            msg = json.loads(payload)
            if self.first_verdict_at == float("inf") and msg["schema"].startswith("inspector.verdict/"):
                self.first_verdict_at = time.monotonic()
            with self._lock:
                self.messages.append(msg)

    def verdicts(self) -> list[dict]:
        with self._lock:
            return [m for m in self.messages if m["schema"].startswith("inspector.verdict/")]

    def events(self, kind: str | None = None) -> list[dict]:
        with self._lock:
            return [
                m
                for m in self.messages
                if m["schema"].startswith("inspector.event/") and (kind is None or m["kind"] == kind)
            ]

    def wait_for(self, predicate, timeout_s: float = 20.0) -> None:
        end = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError("timed out waiting for the daemon's messages")
            time.sleep(0.02)

    def wait_subscribed(self, daemon) -> None:
        """Before the first frame: publish probe events until one arrives, so the subscription is live."""
        end = time.monotonic() + 10
        while not self.events("test-probe"):
            assert time.monotonic() < end, "subscriber never connected"
            daemon.publisher.event("test-probe")
            time.sleep(0.02)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop collecting. A daemon's stop event is the last message of its run: wait (up to timeout_s) until
        every run seen starting has it, so that verdicts still on their way in are not lost (a fixed pause was
        too short on a loaded machine); when no start was seen, a short pause is all there is to go on."""
        end = time.monotonic() + timeout_s
        started = len(self.events("start"))
        if not started:
            time.sleep(0.2)
        while len(self.events("stop")) < started and time.monotonic() < end:
            time.sleep(0.02)
            started = len(self.events("start"))
        self._stop.set()
        self._thread.join(5)
        self.sub.close(0)
        self.ctx.term()


def run_to_end(config: Path, port: int) -> list[dict]:
    """Run the real daemon on `config` (a source that ends, e.g. a folder replay with loop: false) until it stops
    by itself, with a real SUB subscribed before the first frame; -> its verdicts, checked one per seq."""
    from inspector.daemon import Daemon

    sub = Collector(port)
    daemon = Daemon(config, console=False, install_signals=False, before_start=sub.wait_subscribed)
    daemon.start()
    assert daemon.wait() == 0
    sub.close()
    verdicts = sub.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(len(verdicts)))
    return verdicts


def scrape(port: int) -> dict[str, float]:
    """A real HTTP scrape of the exporter: {'name{labels}': value} for inspector_ samples."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("inspector_"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    s = 0.0
    for key, value in samples.items():
        m = re.match(r"([a-z_]+)(\{.*\})?$", key)
        if not m or m.group(1) != name:
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(lab.get(k) == v for k, v in labels.items()):
            s += value
    return s


def write_images(folder: Path, specs: list[tuple[str, int, int, bool, int]]) -> None:
    """PNG files (name, height, width, bright_spot, top_left_value): a dark part, optionally with a bright
    spot the tiny models flag, and a chosen top-left pixel (the tiny recognizer's poison trigger)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, h, w, bright, corner in specs:
        img = np.full((h, w), 60, np.uint8)
        if bright:
            cv2.circle(img, (w // 2, h // 2), max(4, w // 10), 250, -1)
        img[:4, :4] = corner  # a block, so the value survives the resize to the network input
        cv2.imwrite(str(folder / name), img)
