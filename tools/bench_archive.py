#!/usr/bin/env python3
"""What the archive costs the daemon: the demo line inspected as fast as it goes, archive off and on, side by
side in one run (alternating, `--rounds` times), plus what the writer itself achieved.

    .venv/bin/python tools/bench_archive.py [--seconds 15] [--rounds 3]

Rows: off; on but keeping nothing (what holding the ring slots until the decision and the sink cost); on with
the demo's settings (rejects + 5 % of passes); on keeping every frame (pass_fraction 1).
Reported: verdicts/s (median over rounds), p99 acquisition-to-publish latency, records written and dropped,
mean record size and p50 write time (encode + fsync) from the writer's histogram. The archive goes to a
temporary folder on the same disk as the checkout.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.config import ArchiveConfig, load_config  # noqa: E402
from inspector.daemon import Daemon  # noqa: E402

CASES = {
    "off": None,
    "on, keeping nothing (the hand-over alone)": {"pass_fraction": 0.0, "rejects": False},
    "on (rejects + 5% of passes)": {"pass_fraction": 0.05},
    "on (every frame)": {"pass_fraction": 1.0},
}


def run(config: Path, seconds: float, archive: dict | None, folder: Path) -> dict:
    import time

    demo = load_config(config)
    overrides = {
        "source": demo.source.model_copy(update={"rate_hz": None}),
        "publish": demo.publish.model_copy(
            update={
                "broadcast": demo.publish.broadcast.model_copy(update={"bind": "tcp://127.0.0.1:*"}),
                "actuator": None,
            }
        ),
        "metrics": demo.metrics.model_copy(update={"enabled": False}),
        "archive": ArchiveConfig(enabled=archive is not None, path=str(folder), keep_free_mb=0, **(archive or {})),
    }
    daemon = Daemon(config, console=False, install_signals=False, config_overrides=overrides)
    daemon.start()
    stats = daemon.stats
    try:
        time.sleep(1.0)
        stats.begin_window(capacity=1 << 20)
        t0 = time.perf_counter()
        time.sleep(seconds)
        window = stats.end_window()
        elapsed = time.perf_counter() - t0
    finally:
        daemon.stop()
        daemon.wait()
    out = {"fps": window["published"] / elapsed, "p99_ms": _p99(window["latencies_s"])}
    writer = daemon.archive
    if writer is not None:
        reg = writer.metrics.registry
        labels = {"line": demo.line.name, "camera": demo.line.camera}
        n = reg.get_sample_value("inspector_archive_write_seconds_count", labels) or 0
        out.update(
            written=writer.written,
            dropped=sum(writer.dropped.values()),
            record_kb=(reg.get_sample_value("inspector_archive_written_bytes_total", labels) or 0) / max(1, n) / 1024,
            write_ms=_hist_median(reg, labels) * 1e3,
        )
    return out


def hand_over_cost(config: Path, repeats: int = 20) -> dict[str, tuple[float, float]]:
    """Median and p99 (us) of the inference thread's hand-over per frame, kept (a reject with segmenter output)
    and not kept (a pass outside the sample), with the demo's shapes; no writer thread, no disk."""
    import time

    import numpy as np

    from inspector.archive.writer import ArchiveContext, ArchiveWriter
    from inspector.frames import Reason, Verdict
    from inspector.manifest import read_manifest

    demo = load_config(config)
    rec = read_manifest(REPO / "engines" / "demo" / "recognizer.onnx", verify_hash=False)
    seg = read_manifest(REPO / "engines" / "demo" / "segmenter.onnx", verify_hash=False)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (demo.source.height, demo.source.width, 1), dtype=np.uint8)
    block = rng.random(rec.grid, dtype=np.float32)
    pixels = rng.random((len(seg.classes), seg.input.height, seg.input.width), dtype=np.float32)
    out = {}
    for name, reason in (("kept (reject, with segmenter output)", Reason.DEFECT), ("not kept (a pass)", Reason.OK)):
        cfg = demo.model_copy(
            update={"archive": ArchiveConfig(enabled=True, path="/nonexistent", pass_fraction=0.0, pool_slots=64)}
        )
        writer = ArchiveWriter(cfg.archive, Path("/nonexistent"), "l", "c")
        writer.available = True  # no thread: the queue is drained by hand below
        sink = writer.bind(ArchiveContext.build(cfg, cfg.config_hash(), rec, seg))
        v = Verdict(0, 0, "reject" if reason is Reason.DEFECT else "pass", reason, time.time_ns(), 0)
        decision = (v.result, reason, [], 0.9)
        times = []
        for _ in range(repeats):
            for _ in range(32):
                t = time.perf_counter_ns()
                sink.stage(0, frame)
                sink.offer(0, v, decision, block, pixels)
                times.append(time.perf_counter_ns() - t)
            while not writer.queue.empty():
                slot = writer.queue.get()
                slot.pool.release(slot)
        times.sort()
        out[name] = (times[len(times) // 2] / 1e3, times[int(len(times) * 0.99)] / 1e3)
    return out


def _p99(lat) -> float:
    import numpy as np

    return float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan")


def _hist_median(reg, labels) -> float:
    """Median write time from the histogram's buckets (upper bound of the bucket holding the median)."""
    samples = [
        (float(s.labels["le"]), s.value)
        for fam in reg.collect()
        if fam.name == "inspector_archive_write_seconds"
        for s in fam.samples
        if s.name.endswith("_bucket")
    ]
    total = max((v for _, v in samples), default=0)
    for le, v in sorted(samples):
        if v >= total / 2 and total:
            return le
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", help="comma-separated row numbers to run (default: all)")
    ap.add_argument("--hand-over-only", action="store_true", help="only the hand-over's cost (no daemon runs)")
    args = ap.parse_args()
    if args.hand_over_only:
        for name, (med, p99) in hand_over_cost(args.config).items():
            print(f"{name}: median {med:.0f} us, p99 {p99:.0f} us")
        return 0
    cases = dict(CASES)
    if args.cases:
        keep = {int(i) for i in args.cases.split(",")}
        cases = {k: v for i, (k, v) in enumerate(CASES.items()) if i in keep or k == "off"}
    print("| hand-over per frame (inference thread) | median us | p99 us |")
    print("|---|---|---|")
    for name, (med, p99) in hand_over_cost(args.config).items():
        print(f"| {name} | {med:.0f} | {p99:.0f} |")
    print()
    results: dict[str, list[dict]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        for r in range(args.rounds):
            for i, (name, archive) in enumerate(cases.items()):
                results[name].append(run(args.config, args.seconds, archive, Path(tmp) / f"a{r}{i}"))
                print(f"round {r + 1} {name}: {results[name][-1]}", file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    print(f"commit {commit.strip()}, {args.rounds} rounds x {args.seconds:g} s, median per row")
    print("| archive | verdicts/s | vs off | p99 latency ms | written | dropped | record kB | write p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.median(x["fps"] for x in results["off"])
    for name, rows in results.items():
        fps = statistics.median(x["fps"] for x in rows)
        p99 = statistics.median(x["p99_ms"] for x in rows)
        if name == "off" or not any(x.get("written") for x in rows):
            print(f"| {name} | {fps:.1f} | {fps / base:.2f} | {p99:.1f} | | | | |")
            continue
        med = {k: statistics.median(x[k] for x in rows) for k in ("written", "dropped", "record_kb", "write_ms")}
        print(
            f"| {name} | {fps:.1f} | {fps / base:.2f} | {p99:.1f} | {med['written']:.0f} | {med['dropped']:.0f} | "
            f"{med['record_kb']:.0f} | {med['write_ms']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
