"""The daemon, measured in-process: what tools/bench_pipeline.py and tools/bench_gpu.py put beside a bare engine.

    from daemon_bench import benchmark      # with tools/ on sys.path (it is, for scripts in tools/)
    benchmark("configs/folder-replay.yaml", 20, update={"models": {"segmenter_mode": "never"}})

It sits on top of `inspector.daemon.Daemon` (the daemon never imports it), so a benchmark runs exactly what
`inspector run` runs, minus the exporter and the actuator channel.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from inspector.config import ConfigError, load_config  # noqa: E402
from inspector.daemon import Daemon  # noqa: E402
from inspector.runtime import StartupError  # noqa: E402


def benchmark(
    config_path: str | Path, seconds: float, *, settle_s: float = 1.0, update: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Run the daemon in-process on the config's source for `seconds` and measure it.

    No metrics server and no actuator channel; the broadcast socket binds a free port. Frames from the first
    `settle_s` are not counted (thread start-up, first batches). `update` changes fields of sections, e.g.
    {"models": {"segmenter_mode": "never"}} (paths in the file stay relative to it). Returns frames/s of
    verdicts published, acquisition-to-publish p50/p99 (ms) over the measured window, and the counts.
    """

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise StartupError(2, str(exc)) from None
    publish = config.publish.model_copy(
        update={
            "broadcast": config.publish.broadcast.model_copy(update={"bind": "tcp://127.0.0.1:*"}),
            "actuator": None,
        }
    )
    overrides: dict[str, Any] = {"publish": publish, "metrics": config.metrics.model_copy(update={"enabled": False})}
    for section, fields in (update or {}).items():
        overrides[section] = getattr(config, section).model_copy(update=fields)
    daemon = Daemon(config_path, console=False, config_overrides=overrides, install_signals=False)
    daemon.start()
    stats = daemon.stats
    try:
        time.sleep(settle_s)
        stats.begin_window(capacity=1 << 20)
        t0 = time.perf_counter()
        time.sleep(seconds)
        window = stats.end_window()
        elapsed = time.perf_counter() - t0
    finally:
        daemon.stop()
        rc = daemon.wait()
    lat = window["latencies_s"]
    return {
        "fps": window["published"] / elapsed,
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan"),
        "latency_ms_p99": float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan"),
        "seconds": elapsed,
        "published": window["published"],
        "by_reason": window["by_reason"],
        "segmented": window["segmented"],
        "acquired_total": daemon.pipeline.counters.acquired if daemon.pipeline else 0,
        "mean_batch": (
            daemon.pipeline.counters.batched_frames / max(1, daemon.pipeline.counters.batches)
            if daemon.pipeline
            else 0.0
        ),
        "exit_code": rc,
    }
