"""sd_notify over a real unix datagram socket standing in for systemd's NOTIFY_SOCKET, and the watchdog."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest

from inspector.service import Notifier, Watchdog


@pytest.fixture
def systemd_socket(tmp_path):
    """A bound AF_UNIX datagram socket, as systemd binds for NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_reloading_stopping_watchdog_status(systemd_socket):
    path, sock = systemd_socket
    n = Notifier(path)
    assert n.enabled
    assert n.ready("models loaded; warm-up done")
    assert _recv(sock) == {"READY": "1", "STATUS": "models loaded; warm-up done"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    msg = _recv(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert msg["RELOADING"] == "1" and before <= int(msg["MONOTONIC_USEC"]) <= after
    assert n.stopping() and _recv(sock) == {"STOPPING": "1"}
    assert n.watchdog() and _recv(sock) == {"WATCHDOG": "1"}
    assert n.status("12.0 fps\n3 rejects") and _recv(sock) == {"STATUS": "12.0 fps 3 rejects"}
    n.close()


def test_notify_socket_from_the_environment(systemd_socket, monkeypatch):
    path, sock = systemd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert Notifier().ready() and _recv(sock) == {"READY": "1"}


def test_abstract_namespace_socket(monkeypatch):
    name = f"inspector-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert Notifier().stopping()
        assert _recv(sock) == {"STOPPING": "1"}
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False


def test_a_vanished_socket_does_not_raise(tmp_path):
    n = Notifier(str(tmp_path / "gone"))
    assert n.ready() is False
    assert n.watchdog() is False


def test_watchdog_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier("/nonexistent").watchdog_interval_s == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process (we are a child)
    assert Notifier("/nonexistent").watchdog_interval_s is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert Notifier("/nonexistent").watchdog_interval_s == 30.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert Notifier("/nonexistent").watchdog_interval_s is None


def test_watchdog_pings_only_while_frames_move(systemd_socket):
    path, sock = systemd_socket
    sock.settimeout(0.05)
    frames = [0]
    moving = threading.Event()
    moving.set()
    stop = threading.Event()

    def acquisition():
        while not stop.is_set():
            if moving.is_set():
                frames[0] += 1
            time.sleep(0.005)

    producer = threading.Thread(target=acquisition)
    producer.start()
    wd = Watchdog(Notifier(path), lambda: frames[0], interval_s=0.1)  # pings every 50 ms
    pings: list[float] = []

    def collect(seconds: float) -> int:
        count = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if sock.recv(64) == b"WATCHDOG=1":
                    count += 1
                    pings.append(time.monotonic())
            except TimeoutError:
                pass
        return count

    try:
        assert wd.start()
        flowing = collect(0.6)
        moving.clear()  # the camera stalls
        collect(0.1)  # a ping already decided may still arrive
        stalled = collect(0.6)
        moving.set()  # frames again
        resumed = collect(0.6)
    finally:
        wd.stop()
        stop.set()
        producer.join()
    assert flowing >= 4, flowing  # ~12 expected at 50 ms; slack for a loaded CI machine
    assert stalled == 0, stalled
    assert resumed >= 4, resumed
    assert wd.stalls >= 4


def test_watchdog_does_nothing_when_not_enabled(monkeypatch, systemd_socket):
    path, _ = systemd_socket
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert Watchdog(Notifier(path), lambda: 0).start() is False
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Watchdog(Notifier(), lambda: 0, interval_s=1.0).start() is False


def test_watchdog_stops_for_good_once_the_engine_is_unhealthy(systemd_socket):
    """Frames keep moving, but the daemon says its engine is broken (inspector.health): no ping any more, so
    systemd restarts the service."""
    path, sock = systemd_socket
    sock.settimeout(0.05)
    frames = [0]
    healthy = threading.Event()
    healthy.set()
    wd = Watchdog(Notifier(path), lambda: frames[0], interval_s=0.1, healthy=healthy.is_set)

    def pings_while_moving(seconds: float) -> int:
        count = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frames[0] += 1
            with contextlib.suppress(TimeoutError):
                count += sock.recv(64) == b"WATCHDOG=1"
        return count

    try:
        assert wd.start()
        assert pings_while_moving(0.6) >= 2
        healthy.clear()
        pings_while_moving(0.2)  # a ping that passed its health check just before may still land
        assert pings_while_moving(0.6) == 0
        assert wd._thread is not None and not wd._thread.is_alive()  # it has ended: never pings again
    finally:
        wd.stop()
