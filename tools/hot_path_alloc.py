#!/usr/bin/env python3
"""What the hot path allocates per frame, by tracemalloc: the daemon in-process over N frames after a warm-up.

    .venv/bin/python tools/hot_path_alloc.py                                   # tiny models, 10k frames
    .venv/bin/python tools/hot_path_alloc.py --config configs/folder-replay.yaml --frames 10000

tracemalloc runs from the start; one snapshot is taken once the warm-up frames are decided (the metrics' label
children and every scratch buffer exist by then, the queues are as full as they get), another after N more frames,
both while the daemon runs flat out. Their difference, for allocations made in the package, is what the hot path
keeps per frame: a leak or a growing list shows up as N times something, while the frames in flight at either
moment cancel out. The peak of traced memory during the window, above what is alive at its end, bounds what was
allocated and freed again (a frame-sized temporary would show there).

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


def measure(
    config_path: Path, frames: int, warmup: int = 1000, update: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Run the daemon for warmup + frames frames; return what the window kept, by file:line of the package."""
    daemon = Daemon(
        config_path,
        max_frames=warmup + frames + 10_000,  # never reached: the window ends on the decided count
        console=False,
        config_overrides=_overrides(config_path, update),
        install_signals=False,
    )
    tracemalloc.start(16)
    try:
        daemon.start()
        assert daemon.pipeline is not None
        counters = daemon.pipeline.counters
        pool_before = daemon.pipeline.tickets.size
        try:
            # A snapshot holds the GIL for a moment: every thread stalls and queues fill behind it. The first one
            # is thrown away, so that the ticket pool has grown to what such a stall needs before the window.
            while counters.decided < warmup // 2:
                time.sleep(0.01)
            tracemalloc.take_snapshot()
            while counters.decided < warmup:
                time.sleep(0.01)
            first = tracemalloc.take_snapshot()
            tracemalloc.reset_peak()
            start = counters.decided
            t0 = time.perf_counter()
            while counters.decided < start + frames:
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            second = tracemalloc.take_snapshot()
            current, peak = tracemalloc.get_traced_memory()
            measured = counters.decided - start
        finally:
            daemon.stop()
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


def tiny_line(folder: Path, rate_hz: float = 300.0, size: int = 320) -> Path:
    """The tiny models on a synthetic size x size line at `rate_hz`, gated segmenter.

    A paced line, not "as fast as possible": flat out, the publisher (the thread with the most Python per frame,
    and tracemalloc slows Python several-fold) falls behind, its queue grows over the window and the snapshots
    would compare a short queue with a full one: frames in flight, not memory kept."""
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
    p.add_argument("--rate", type=float, default=300.0, help="frames/s of the synthetic line (without --config)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config = args.config or tiny_line(Path(tmp), args.rate)
        result = measure(config, args.frames, args.warmup)
    result["bytes_kept_per_frame"] = result["kept_bytes"] / max(1, result["frames"])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
