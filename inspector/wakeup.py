"""A wake-up signal between two threads that does not hold the GIL while it wakes the other one.

`threading.Condition.notify` and `Event.set` wake a waiting thread with a futex call made while the caller holds
the GIL. When the OS then runs the woken thread on the caller's core (wakeup preemption, typical on a busy
2-core box), the caller sits descheduled *holding the GIL*, and the woken thread immediately blocks on that GIL:
both wait. py-spy --gil measured it on the inference thread: about a third of the time it held the GIL went to
two such wake-ups per batch (0.3 ms each on the shared box). `os.eventfd_write` (a pipe where there is no
eventfd) releases the GIL around the system call, so a preempted waker blocks nobody.

Level-triggered, like an Event: `set` any number of times, the next `wait` returns at once and clears it.
"""

from __future__ import annotations

import contextlib
import os
import select


class Wakeup:
    def __init__(self) -> None:
        self._eventfd = hasattr(os, "eventfd")  # Linux
        if self._eventfd:
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - other POSIX systems
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)
        self._poll = select.poll()
        self._poll.register(self._read_fd, select.POLLIN)

    def set(self) -> None:
        """Wake the waiter (now, or its next wait). Never blocks; the GIL is released for the system call."""
        try:
            if self._eventfd:
                os.eventfd_write(self._write_fd, 1)
            else:  # pragma: no cover
                os.write(self._write_fd, b"\x01")
        except BlockingIOError:
            pass  # the counter or the pipe is full: the waiter is woken anyway

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):  # nothing to clear
            os.read(self._read_fd, 4096)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for set() (GIL released while waiting); True if it was set. Clears it."""
        if not self._poll.poll(int(timeout_s * 1000)):
            return False
        self.clear()
        return True

    def close(self) -> None:
        os.close(self._read_fd)
        if self._write_fd != self._read_fd:
            os.close(self._write_fd)
