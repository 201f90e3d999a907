"""What an operator sees while `inspector run` runs: a live status line in a terminal, a periodic log line
otherwise (journald), built from the verdicts as they are published.

`LiveStats` is fed by the publisher thread (through `MetricsTap`, which forwards everything to the Prometheus
metrics and also records each published verdict here), so the console shows what actually left the daemon:
fps, verdicts by result and reason, acquisition-to-publish p50/p99 over the recent window, drops, and live
accuracy (TPR on defective parts, TNR on good ones) against the ground truth that the synthetic source and
replays with masks attach to each frame. Only inspected verdicts count towards accuracy: a fail-safe reject
says nothing about the models.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

from inspector.frames import Verdict
from inspector.metrics import Metrics
from inspector.pipeline import PipelineCounters

log = logging.getLogger("inspector.console")

LATENCY_WINDOW = 4096  # recent verdicts the p50/p99 are taken over (a preallocated ring, no growth)


class LiveStats:
    """Thread-safe tallies of published verdicts. `record` is called from the publisher thread only."""

    def __init__(self, window: int = LATENCY_WINDOW):
        self._lock = threading.Lock()
        self._lat = np.zeros(window, np.float64)
        self._lat_n = 0  # latencies recorded in total (index into the ring = n % window)
        self.published = 0
        self.by_reason: dict[tuple[str, str], int] = {}
        self.tp = self.fn = self.tn = self.fp = 0
        self._window: dict[str, Any] | None = None  # benchmark window: every latency, not only the recent ones

    def record(self, v: Verdict, latency_s: float) -> None:
        reason = v.reason.value
        with self._lock:
            self.published += 1
            key = (v.result, reason)
            self.by_reason[key] = self.by_reason.get(key, 0) + 1
            self._lat[self._lat_n % len(self._lat)] = latency_s
            self._lat_n += 1
            if v.truth is not None and v.reason.inspected:
                rejected = v.result == "reject"
                if v.truth.defective:
                    self.tp += rejected
                    self.fn += not rejected
                else:
                    self.fp += rejected
                    self.tn += not rejected
            w = self._window
            if w is not None:
                if w["n"] < len(w["lat"]):
                    w["lat"][w["n"]] = latency_s
                w["n"] += 1
                w["by_reason"][reason] = w["by_reason"].get(reason, 0) + 1
                w["segmented"] += v.segmenter_ran

    def latency_percentiles_ms(self) -> tuple[float, float]:
        with self._lock:
            n = min(self._lat_n, len(self._lat))
            if not n:
                return float("nan"), float("nan")
            p50, p99 = np.percentile(self._lat[:n], (50, 99))
        return float(p50 * 1e3), float(p99 * 1e3)

    def begin_window(self, capacity: int) -> None:
        """Start recording every published verdict's latency (benchmarks), up to `capacity` of them."""
        with self._lock:
            self._window = {"lat": np.zeros(capacity, np.float64), "n": 0, "by_reason": {}, "segmented": 0}

    def end_window(self) -> dict[str, Any]:
        with self._lock:
            w, self._window = self._window, None
        if w is None:
            raise RuntimeError("end_window() without begin_window()")
        return {
            "published": w["n"],
            "latencies_s": w["lat"][: min(w["n"], len(w["lat"]))],
            "by_reason": w["by_reason"],
            "segmented": w["segmented"],
        }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "published": self.published,
                "by_reason": dict(self.by_reason),
                "tp": self.tp,
                "fn": self.fn,
                "tn": self.tn,
                "fp": self.fp,
            }


class MetricsTap:
    """The publisher's metrics (`publish.PublisherMetrics`): everything goes to `Metrics`, and each published
    verdict is also recorded in LiveStats for the console and benchmarks."""

    def __init__(self, metrics: Metrics, stats: LiveStats):
        self._metrics = metrics
        self._stats = stats

    def verdict_published(self, v: Verdict, latency_s: float) -> None:
        self._metrics.verdict_published(v, latency_s)
        self._stats.record(v, latency_s)

    def verdict_dropped(self, cause: str) -> None:
        self._metrics.verdict_dropped(cause)

    def stage(self, name: str, seconds: float) -> None:
        self._metrics.stage(name, seconds)

    def actuator_connected(self, connected: bool | int) -> None:
        self._metrics.actuator_connected(connected)

    def actuator_undelivered(self, cause: str) -> None:
        self._metrics.actuator_undelivered(cause)

    def actuator_refused(self, cause: str) -> None:
        self._metrics.actuator_refused(cause)

    def verdict_encode_failed(self) -> None:
        self._metrics.verdict_encode_failed()


def _rate(num: int, den: int) -> str:
    return f"{100.0 * num / den:.1f}%" if den else "-"


class Console:
    """Renders LiveStats every `interval_s`: a rewritten line on a TTY, a log line otherwise."""

    def __init__(self, stats: LiveStats, interval_s: float, counters: PipelineCounters, stream: TextIO | None = None):
        self.stats = stats
        self.interval_s = interval_s
        self.counters = counters
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_t = time.monotonic()
        self._last_published = 0
        self._next = self._last_t + interval_s
        self.dropped: Callable[[], int] = lambda: 0  # verdicts dropped on the way out (the publisher's counter)

    def due(self) -> float:
        """Seconds until the next update (<= 0: now)."""
        return self._next - time.monotonic()

    def line(self) -> str:
        s = self.stats.snapshot()
        now = time.monotonic()
        fps = (s["published"] - self._last_published) / max(1e-9, now - self._last_t)
        self._last_t, self._last_published = now, s["published"]
        p50, p99 = self.stats.latency_percentiles_ms()
        by = s["by_reason"]
        passed = sum(n for (result, _), n in by.items() if result == "pass")
        rejected = sum(n for (result, _), n in by.items() if result == "reject")
        reasons: dict[str, int] = {}
        for (_, reason), n in by.items():
            reasons[reason] = reasons.get(reason, 0) + n
        reason_text = " ".join(f"{r}={reasons[r]}" for r in sorted(reasons))
        acc = ""
        if s["tp"] + s["fn"] + s["tn"] + s["fp"]:
            acc = f" | TPR {_rate(s['tp'], s['tp'] + s['fn'])} TNR {_rate(s['tn'], s['tn'] + s['fp'])}"
        return (
            f"{fps:6.1f} fps | acquired {self.counters.acquired} published {s['published']} "
            f"dropped {self.dropped()} | pass {passed} reject {rejected} ({reason_text}) | "
            f"latency p50 {p50:.1f} ms p99 {p99:.1f} ms{acc}"
        )

    def tick(self, force: bool = False) -> None:
        if not force and self.due() > 0:
            return
        self._next = time.monotonic() + self.interval_s
        text = self.line()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
        else:
            log.info("%s", text)

    def finish(self) -> None:
        """Final line (kept on screen in a terminal), unless the last one is already current."""
        if self.stats.snapshot()["published"] != self._last_published:
            self.tick(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
