#!/usr/bin/env python3
"""What the hot path allocates per frame, by tracemalloc: the daemon in-process over N frames after a warm-up.

    .venv/bin/python tools/hot_path_alloc.py                                   # tiny models, 10k frames
    .venv/bin/python tools/hot_path_alloc.py --config configs/folder-replay.yaml --frames 10000

tracemalloc runs from the start. The source is gated (`Gate`): a snapshot is taken only while nothing is in
flight (every frame grabbed so far has had its verdict published and its ticket given back), once the warm-up
frames are decided (the metrics' label children and every scratch buffer exist by then) and again after N more.
Their difference, for allocations made in the package, is what the hot path keeps per frame: a leak or a growing
list shows up as N times something, and frames in flight cannot masquerade as kept memory whatever the machine's
speed. `in_flight` also bounds the frames between grab and publication while the window runs (closed loop): a
machine slower than the line then runs slower instead of piling frames up in queues (and growing the ticket
pool, which is kept memory). The peak of traced memory during the window, above what is alive at its end,
bounds what was allocated and freed again (a frame-sized temporary would show there).

Without --config it builds the tiny test models (tests/tiny_models.py) and a synthetic 320x320 line, which is
what tests/test_hot_path_alloc.py runs in CI (with fewer frames).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from inspector.config import load_config  # noqa: E402
from inspector.daemon import Daemon  # noqa: E402

PACKAGE = str(ROOT / "inspector")


def _overrides(config_path: Path, update: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    config = load_config(config_path)
    publish = config.publish.model_copy(
        update={
            "broadcast": config.publish.broadcast.model_copy(update={"bind": "tcp://127.0.0.1:*"}),
            "actuator": None,
        }
    )
    out: dict[str, Any] = {"publish": publish, "metrics": config.metrics.model_copy(update={"enabled": False})}
    for section, fields in (update or {}).items():
        out[section] = getattr(config, section).model_copy(update=fields)
    return out


class Gate:
    """Wraps the source's grab(), on the acquisition thread: no new frame while `in_flight` frames (None: no
    limit) are between grab and their verdict's publication, nor while paused. A gated grab returns None at its
    timeout, as a camera without a frame does, so the pipeline's own loop and stop() are unchanged."""

    def __init__(self, daemon: Daemon, in_flight: int | None):
        assert daemon.pipeline is not None and daemon.publisher is not None
        self.pipeline, self.publisher = daemon.pipeline, daemon.publisher
        self.limit = in_flight
        self.grabbed = 0
        self.paused = False
        self.waiting = False  # the acquisition thread is in grab(), held by the gate, holding no frame
        self._grab = self.pipeline.source.grab
        self.pipeline.source.grab = self.grab  # type: ignore[method-assign]

    def done(self) -> int:
        """Verdicts the publisher is finished with (sent or dropped)."""
        return self.publisher.published + self.publisher.dropped

    def _held(self) -> bool:
        return self.paused or (self.limit is not None and self.grabbed - self.done() >= self.limit)

    def grab(self, out: Any, timeout_s: float) -> Any:
        if self._held():
            end = time.monotonic() + timeout_s
            self.waiting = True
            while self._held():
                if time.monotonic() > end:
                    self.waiting = False
                    return None
                time.sleep(0.0005)
            self.waiting = False
        grab = self._grab(out, timeout_s)
        if grab is not None:
            self.grabbed += 1
        return grab

    def quiesce(self, timeout_s: float = 120.0) -> None:
        """Pause the source and wait until nothing is in flight: every verdict published, every ticket back."""
        self.paused = True
        tickets = self.pipeline.tickets
        end = time.monotonic() + timeout_s
        while not (self.waiting and self.done() == self.grabbed and len(tickets._free) == tickets.size):
            if time.monotonic() > end or self.pipeline.finished.is_set():
                raise RuntimeError(f"the daemon did not drain: {self.grabbed} grabbed, {self.done()} done")
            time.sleep(0.01)

    def resume(self) -> None:
        self.paused = False

    def wait_done(self, n: int) -> None:
        while self.done() < n:
            if self.pipeline.finished.is_set():
                raise RuntimeError(f"the daemon stopped after {self.done()} verdicts")
            time.sleep(0.01)


def measure(
    config_path: Path,
    frames: int,
    warmup: int = 1000,
    update: dict[str, dict[str, Any]] | None = None,
    in_flight: int | None = None,
) -> dict[str, Any]:
    """Run the daemon for warmup + frames frames; return what the window kept, by file:line of the package.
    `in_flight`: at most that many frames between grab and published verdict (None: the source's own pace)."""
    gates: list[Gate] = []
    daemon = Daemon(
        config_path,
        max_frames=warmup + frames + 10_000,  # never reached: the window ends on the decided count
        console=False,
        config_overrides=_overrides(config_path, update),
        install_signals=False,
        before_start=lambda d: gates.append(Gate(d, in_flight)),
    )
    tracemalloc.start(16)
    try:
        daemon.start()
        assert daemon.pipeline is not None
        gate = gates[0]
        pool_before = daemon.pipeline.tickets.size
        try:
            gate.wait_done(warmup)
            gate.quiesce()
            first = tracemalloc.take_snapshot()
            tracemalloc.reset_peak()
            start = gate.done()
            t0 = time.perf_counter()
            gate.resume()
            gate.wait_done(start + frames)
            gate.quiesce()
            elapsed = time.perf_counter() - t0
            second = tracemalloc.take_snapshot()
            current, peak = tracemalloc.get_traced_memory()
            measured = gate.done() - start
        finally:
            daemon.stop()
            gate.resume()
            daemon.wait()
    finally:
        tracemalloc.stop()
    ours = [tracemalloc.Filter(True, PACKAGE + "/*", all_frames=True)]
    growth = second.filter_traces(ours).compare_to(first.filter_traces(ours), "lineno")
    return {
        "frames": measured,
        "seconds": elapsed,
        "kept_bytes": sum(s.size_diff for s in growth),
        "kept_blocks": sum(s.count_diff for s in growth),
        "peak_above_end_bytes": peak - current,
        "top": [
            f"{s.traceback[0].filename.removeprefix(str(ROOT) + '/')}:{s.traceback[0].lineno} "
            f"{s.size_diff:+d} B in {s.count_diff:+d}"
            for s in growth[:8]
        ],
        "ticket_pool": [pool_before, daemon.pipeline.tickets.size],
        "verdicts_published": daemon.publisher.published if daemon.publisher else 0,
        "verdicts_dropped": daemon.publisher.dropped if daemon.publisher else 0,
    }


def tiny_line(folder: Path, rate_hz: float | None = 300.0, size: int = 320) -> Path:
    """The tiny models on a synthetic size x size line at `rate_hz`, gated segmenter; `rate_hz` None: as fast as
    the pipeline takes frames (with measure()'s `in_flight`, a closed loop at whatever speed the machine has).

    Open loop (a rate, no `in_flight`), the line must be slower than the machine: else the publisher (the thread
    with the most Python per frame, and tracemalloc slows Python several-fold) falls behind, its backlog grows
    the ticket pool during the window, and that growth is kept memory."""
    from daemon_helpers import free_port, synthetic, write_config
    from tiny_models import write_tiny_models

    models = write_tiny_models(folder / "models")
    source = synthetic(rate=rate_hz).replace("width: 128", f"width: {size}").replace("height: 128", f"height: {size}")
    return write_config(folder / "line.yaml", models, source=source, port=free_port())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="line config (default: tiny models on a synthetic line)")
    p.add_argument("--frames", type=int, default=10_000, help="frames in the measured window")
    p.add_argument("--warmup", type=int, default=1000, help="frames before the first snapshot")
    p.add_argument(
        "--rate",
        type=float,
        default=300.0,
        help="frames/s of the synthetic line (without --config); 0: as fast as taken",
    )
    p.add_argument(
        "--in-flight", type=int, default=None, help="closed loop: at most this many frames awaiting their verdict"
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config = args.config or tiny_line(Path(tmp), args.rate or None)
        result = measure(config, args.frames, args.warmup, in_flight=args.in_flight)
    result["bytes_kept_per_frame"] = result["kept_bytes"] / max(1, result["frames"])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
