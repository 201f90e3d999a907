"""systemd integration: the sd_notify protocol over $NOTIFY_SOCKET, and a watchdog that only pets while frames move.

The protocol is a datagram of newline-separated KEY=VALUE lines sent to the unix socket named by $NOTIFY_SOCKET
(a path, or an abstract-namespace name written with a leading "@"). It is implemented here directly (no
libsystemd binding) because it is ten lines and keeps the runtime free of a C dependency. Without
$NOTIFY_SOCKET (run from a terminal, under a plain supervisor) every call is a no-op.

The watchdog is the point of WatchdogSec=: systemd restarts the service when pings stop. Pinging from a timer
that runs whatever the pipeline does would prove only that the process is scheduled; `Watchdog` pings only when
the frame counter it is given has advanced since the previous ping, so a wedged camera, a hung inference or a
deadlocked publisher stops the pings and systemd restarts the instance.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages. Thread-safe; never raises (a lost notification must not stop inspection)."""

    def __init__(self, socket_path: str | None = None):
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | bytes | None = None
        if path:
            # "@name" is the abstract namespace: the kernel wants a leading NUL byte instead.
            self._address = b"\0" + path[1:].encode() if path.startswith("@") else path
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send KEY=VALUE lines in one datagram. Returns whether it was sent."""
        if self._address is None:
            return False
        data = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self._address)
                return True
            except OSError as exc:
                if not self._warned:  # once: a gone socket would otherwise flood the log at every ping
                    log.warning("sd_notify to %r failed: %s", self._address, exc)
                    self._warned = True
                return False

    def ready(self, status: str = "") -> bool:
        """Start-up done (models loaded, warm-up ran) or reload done: systemd considers the unit active."""
        return self.notify("READY=1", *((_status(status),) if status else ()))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (>= 253, Type=notify-reload) match this RELOADING=1 to the reload it asked
        # for; older systemd ignores it. Send READY=1 when the reload is done (or refused).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by `systemctl status`."""
        return self.notify(_status(text))

    @property
    def watchdog_interval_s(self) -> float | None:
        """systemd's watchdog timeout for this process (WatchdogSec=), or None when the watchdog is off."""
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = os.environ.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process the timeout is meant for; a child that inherited it must not ping.
        if pid and pid.isdigit() and int(pid) != os.getpid():
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 1e6 if value > 0 else None

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _status(text: str) -> str:
    # A newline would start a new assignment; keep the status on one line.
    return "STATUS=" + " ".join(text.split())


class Watchdog:
    """Pings WATCHDOG=1 every half interval, but only while `progress()` has advanced since the last ping.

    `progress` is a counter that must move while the pipeline is healthy: frames acquired on a free-running
    camera. On a hardware-triggered line that may legitimately stand still (a break, a jam upstream), pass a
    counter that the acquisition loop advances on every fetch attempt, including timeouts, so an idle line is
    not mistaken for a hung one. The interval defaults to the notifier's (WATCHDOG_USEC); without one, start()
    does nothing. `healthy`, when given, is asked before every ping: once it says False the pings stop for good.
    """

    def __init__(
        self,
        notifier: Notifier,
        progress: Callable[[], int],
        interval_s: float | None = None,
        healthy: Callable[[], bool] | None = None,
    ):
        self.notifier = notifier
        self.progress = progress
        # False stops the pings for good, moving frames or not: the daemon says its engine is broken
        # (inspector.health), and systemd's restart is the cure.
        self.healthy = healthy
        self.interval_s = interval_s if interval_s is not None else notifier.watchdog_interval_s
        self.pings = 0
        self.stalls = 0  # ping periods skipped because nothing moved
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start pinging. Returns False (and starts nothing) when the watchdog is not enabled."""
        if self.interval_s is None or not self.notifier.enabled:
            return False
        if self._thread is not None:
            raise RuntimeError("watchdog already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        assert self.interval_s is not None
        period = self.interval_s / 2
        last = self.progress()
        # The first ping comes right away: READY=1 is sent after warm-up, and frames may not flow for a while
        # after that on a triggered line; systemd's clock starts at READY, and one free ping is what it expects.
        self.notifier.watchdog()
        self.pings += 1
        stalled = 0  # consecutive periods without progress
        while not self._stop.wait(period):
            if self.healthy is not None and not self.healthy():
                log.error("watchdog: the engine is unhealthy; no more pings, systemd restarts the service")
                return
            now = self.progress()
            if now != last:
                last = now
                if stalled:
                    log.info("watchdog: progress again after %.1f s; pinging systemd", stalled * period)
                stalled = 0
                if self.notifier.watchdog():
                    self.pings += 1
            else:
                stalled += 1
                self.stalls += 1
                if stalled == 1 or stalled % 10 == 0:
                    log.warning("watchdog: no progress for %.1f s; not pinging systemd", stalled * period)
