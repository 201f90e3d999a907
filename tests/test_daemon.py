"""`inspector run` as a subprocess, the way systemd runs it: a real NOTIFY_SOCKET datagram socket, SIGHUP
reloads (valid, then invalid), a real metrics scrape, and SIGTERM in the middle of the stream."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from daemon_helpers import Collector, free_port, scrape, synthetic, total, write_config
from tiny_models import write_tiny_models

# A guard against a hang, not a speed limit: a fresh interpreter loading ONNX Runtime and OpenCV can take a
# minute on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(600)


class NotifySocket:
    """The systemd side of sd_notify: a unix datagram socket collecting what the daemon sends."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def first(self, key: str) -> float | None:
        return next((t for t, m in self.messages if m.startswith(key)), None)

    def count(self, key: str) -> int:
        return sum(m.startswith(key) for _, m in self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _wait(predicate, timeout_s: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_systemd_lifecycle_reload_and_sigterm_lose_nothing(tmp_path):
    port = free_port()
    models = write_tiny_models(tmp_path / "models")
    # pool_size makes the source take a moment to open after the sockets are bound: the subscriber joins first.
    config = write_config(tmp_path / "line.yaml", models, source=synthetic(rate=100, pool=300), port=port)
    good = config.read_text()
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    sub = Collector(port)
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "inspector.cli", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        _wait(lambda: len(sub.verdicts()) >= 20, 180, what="20 verdicts")  # includes the daemon's start-up
        ready = notify.first("READY=1")
        assert ready is not None
        assert ready <= sub.first_verdict_at, "READY=1 came after verdicts"
        _wait(lambda: notify.count("WATCHDOG=1") >= 2, what="watchdog pings")
        port_line = next(line for line in stderr_lines if "metrics on http://" in line)
        metrics_port = int(re.search(r":(\d+)/metrics", port_line).group(1))
        first_hash = sub.verdicts()[0]["config_hash"]

        # A valid change: the new hash appears in later verdicts.
        config.write_text(good + "decision: {block_threshold: 0.8}\n")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: len(sub.events("reload")) == 1, what="reload event")
        (ok,) = sub.events("reload")
        assert ok["result"] == "ok" and ok["config_hash"] != first_hash
        assert notify.count("RELOADING=1") == 1 and notify.count("READY=1") == 2
        _wait(lambda: sub.verdicts()[-1]["config_hash"] == ok["config_hash"], what="verdicts with the new hash")

        # An invalid file: refused, counted, the running config stays.
        config.write_text(good + "decision: {block_threshold: high}\n")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: len(sub.events("reload")) == 2, what="second reload event")
        bad = sub.events("reload")[1]
        assert bad["result"] == "invalid" and "line.yaml:" in bad["error"]
        n = len(sub.verdicts())
        _wait(lambda: len(sub.verdicts()) > n + 5, what="verdicts after the refused reload")
        assert sub.verdicts()[-1]["config_hash"] == ok["config_hash"]
        samples = scrape(metrics_port)
        assert total(samples, "inspector_reloads_total", result="invalid") == 1
        assert total(samples, "inspector_reloads_total", result="ok") == 1
        assert any("block_threshold" in line for line in stderr_lines)

        # SIGTERM mid-stream: exit 0, STOPPING=1, and every acquired frame has its verdict.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
        notify.close()
    assert notify.count("STOPPING=1") == 1
    verdicts = sub.verdicts()
    seqs = [v["seq"] for v in verdicts]
    (stop,) = sub.events("stop")
    assert seqs == list(range(stop["acquired"])), "a verdict is missing"
    assert "Traceback" not in "".join(stderr_lines)
