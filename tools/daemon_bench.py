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


def stage_seconds(daemon: Daemon) -> dict[str, float]:
    """Seconds spent so far in each pipeline stage (inspector_stage_seconds_sum from the daemon's registry)."""
    assert daemon.metrics is not None
    out: dict[str, float] = {}
    for metric in daemon.metrics.registry.collect():
        if metric.name == "inspector_stage_seconds":
            for sample in metric.samples:
                if sample.name.endswith("_sum"):
                    out[sample.labels["stage"]] = sample.value
    return out


def benchmark(
    config_path: str | Path,
    seconds: float,
    *,
    settle_s: float = 1.0,
    update: dict[str, dict[str, Any]] | None = None,
    stage_budget: bool = False,
) -> dict[str, Any]:
    """Run the daemon in-process on the config's source for `seconds` and measure it.

    No metrics server and no actuator channel; the broadcast socket binds a free port. Frames from the first
    `settle_s` are not counted (thread start-up, first batches). `update` changes fields of sections, e.g.
    {"models": {"segmenter_mode": "never"}} (paths in the file stay relative to it). Returns frames/s of
    verdicts published, acquisition-to-publish p50/p99 (ms) over the measured window, and the counts; with
    `stage_budget`, also each stage's milliseconds per published frame over the window (`stage_ms_per_frame`).
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
        stages0 = stage_seconds(daemon)
        stats.begin_window(capacity=1 << 20)
        t0, cpu0 = time.perf_counter(), time.process_time()
        time.sleep(seconds)
        window = stats.end_window()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stages1 = stage_seconds(daemon)
    finally:
        daemon.stop()
        rc = daemon.wait()
    lat = window["latencies_s"]
    frames = max(1, window["published"])
    budget = {k: (stages1[k] - stages0.get(k, 0.0)) * 1e3 / frames for k in stages1} if stage_budget else {}
    return {
        "stage_ms_per_frame": budget,
        "cpu_ms_per_frame": cpu * 1e3 / frames,  # all the daemon's threads (ONNX Runtime's included)
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
