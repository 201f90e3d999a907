#!/usr/bin/env python3
"""Pipeline benchmark on the CPU: the best bare ONNX Runtime loop side by side with the whole daemon, in one run.

    .venv/bin/python tools/bench_pipeline.py                       # configs/folder-replay.yaml, demo recognizer
    .venv/bin/python tools/bench_pipeline.py --seconds 5 --rounds 3 --no-append

Source: the folder replay of Magnetic Tile (../shared/datasets/magnetic-tile), each tile at its native size,
decoded into memory at start-up (`preload: true`) and fed as fast as inference takes frames (`rate_hz: null`),
so the number is the pipeline's, not the disk's. Recognizer only (`segmenter_mode: never`): the work per frame does
not depend on what the model flags.

1. Bare loop sweep: the recognizer alone, `backend.run(batch)` in a loop on inputs preprocessed beforehand from
   the same tiles (no acquisition, no resize, no decision, no publishing), for every intra-op thread count and
   batch size given; the best (threads, batch) is "the best bare engine loop".
2. Rounds, interleaved so that a busy neighbour hurts both alike: the sweep's best few bare settings again (a
   short sweep on a shared machine can flatter one), then the daemon with the config's own settings and with
   the settings of the bare loop leading so far; medians over the rounds; CPU time per frame of each.
3. The daemon's per-frame budget by stage (inspector_stage_seconds from its own metrics registry).

Prints a markdown section and (unless --no-append) appends it, with the command, commit, CPU and load average,
to docs/BENCHMARKS.md under "Pipeline on the CPU". Skips with a clear message when the data set is absent.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon_bench import benchmark  # noqa: E402

from inspector.backends import backend_class  # noqa: E402
from inspector.config import Config, OnnxRuntimeSettings, load_config, resolve_path  # noqa: E402
from inspector.daemon import source_config  # noqa: E402
from inspector.preprocess import Preprocessor  # noqa: E402
from inspector.runtime import load_model_manifest  # noqa: E402
from inspector.sources import source_class  # noqa: E402

SECTION = "## Pipeline on the CPU"
STAGES = ("acquire", "preprocess", "recognizer", "decision", "publish")


class _NoEvents:
    def camera_state(self, connected: bool, detail: str) -> None:
        pass


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_text() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def real_tiles(config_path: Path, config: Config, count: int) -> list[np.ndarray]:
    """`count` frames from the config's own source, exactly as the daemon's pipeline sees them: each at its own
    size (a replay delivers images at their native size, at the top-left of a larger slot)."""
    src_cfg = source_config(config, config_path)
    source = source_class(src_cfg.kind)(src_cfg, _NoEvents())
    source.open()
    source.start()
    frames = np.zeros((count, src_cfg.height, src_cfg.width, 1 if src_cfg.pixel_format == "mono8" else 3), np.uint8)
    tiles = []
    try:
        for i in range(count):
            while (grab := source.grab(frames[i], 1.0)) is None:
                pass
            tiles.append(frames[i, : grab.height, : grab.width])
    finally:
        source.stop()
        source.close()
    return tiles


class BareLoop:
    """The recognizer alone in a loop of backend.run(batch) on preprocessed real tiles."""

    def __init__(self, config_path: Path, config: Config, tiles: list[np.ndarray], threads: int, batch: int):
        path = resolve_path(config_path, config.models.recognizer.path)
        settings = config.models.onnxruntime.model_copy(update={"intra_op_threads": threads})
        manifest = load_model_manifest("onnxruntime", path, settings, batch)
        self.backend = backend_class("onnxruntime")(path, manifest, settings, batch)
        pre = Preprocessor.for_model(manifest, batch, config.source.pixel_format)
        pre.buffer = self.backend.input_buffer()
        for i in range(batch):
            pre.put(i, tiles[i % len(tiles)])
        self.batch = batch
        for _ in range(config.pipeline.warmup_runs + 2):
            self.backend.run(batch)

    def fps(self, seconds: float) -> float:
        return self.measure(seconds)[0]

    def measure(self, seconds: float) -> tuple[float, float]:
        """-> (frames/s, CPU ms per frame of this process, ONNX Runtime's threads included)."""
        run, batch = self.backend.run, self.batch
        n = 0
        t0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            run(batch)
            n += batch
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return n / elapsed, cpu * 1e3 / n

    def close(self) -> None:
        self.backend.close()


def daemon_run(config_path: Path, seconds: float, threads: int, batch: int) -> dict[str, Any]:
    update = {
        "models": {"segmenter_mode": "never"},
        "pipeline": {"batch_size": batch},
    }
    config = load_config(config_path)
    update["models"]["onnxruntime"] = config.models.onnxruntime.model_copy(update={"intra_op_threads": threads})
    return benchmark(config_path, seconds, update=update, stage_budget=True)


def threads_label(threads: int) -> str:
    return str(threads) if threads else f"0 (ORT default: {os.cpu_count()} here)"


Setting = tuple[int, int]  # (intra-op threads, batch)


def sweep_bare(args: argparse.Namespace, config: Config, tiles: list[np.ndarray]) -> dict[Setting, float]:
    threads_set = [int(x) for x in args.threads.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    sweep: dict[Setting, float] = {}
    for threads in threads_set:
        for batch in batches:
            loop = BareLoop(args.config, config, tiles, threads, batch)
            try:
                sweep[(threads, batch)] = loop.fps(args.sweep_seconds)
            finally:
                loop.close()
            print(f"bare threads {threads} batch {batch}: {sweep[(threads, batch)]:.1f} frames/s", file=sys.stderr)
    return sweep


def run_rounds(
    args: argparse.Namespace, config: Config, tiles: list[np.ndarray], candidates: list[Setting], own: Setting
) -> tuple[dict[Setting, list[tuple[float, float]]], dict[Setting, list[dict[str, Any]]]]:
    """Interleaved rounds: each candidate bare loop, then the daemon at its own and at the leading settings."""
    bare_runs: dict[Setting, list[tuple[float, float]]] = {c: [] for c in candidates}
    daemon_runs: dict[Setting, list[dict[str, Any]]] = {}
    loops = {c: BareLoop(args.config, config, tiles, *c) for c in candidates}
    try:
        for r in range(args.rounds):
            for c, loop in loops.items():
                bare_runs[c].append(loop.measure(args.seconds))
                print(f"round {r + 1}: bare threads {c[0]} batch {c[1]}: {bare_runs[c][-1][0]:.1f}", file=sys.stderr)
            leader = max(candidates, key=lambda c: statistics.median(f for f, _ in bare_runs[c]))
            for s in dict.fromkeys([own, leader]):
                d = daemon_run(args.config, args.seconds, *s)
                daemon_runs.setdefault(s, []).append(d)
                print(f"round {r + 1}: daemon threads {s[0]} batch {s[1]}: {d['fps']:.1f}", file=sys.stderr)
    finally:
        for loop in loops.values():
            loop.close()
    return bare_runs, daemon_runs


def report(
    args: argparse.Namespace,
    argv: list[str] | None,
    config: Config,
    sweep: dict[Setting, float],
    bare_runs: dict[Setting, list[tuple[float, float]]],
    daemon_runs: dict[Setting, list[dict[str, Any]]],
    own: Setting,
    load_before: str,
) -> str:
    threads_set = sorted({s[0] for s in sweep})
    batches = sorted({s[1] for s in sweep})
    candidates = list(bare_runs)
    best = max(candidates, key=lambda c: statistics.median(f for f, _ in bare_runs[c]))
    bare = statistics.median(f for f, _ in bare_runs[best])
    bare_cpu = statistics.median(c for _, c in bare_runs[best])
    cmd_args = argv if argv is not None else sys.argv[1:]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    rec = resolve_path(args.config, config.models.recognizer.path).resolve()
    manifest = load_model_manifest("onnxruntime", rec, OnnxRuntimeSettings(), 1)
    where = rec.relative_to(ROOT) if rec.is_relative_to(ROOT) else rec
    # The input and fit in the record: the same file name may hold a squashing 224 model or a native-resolution
    # one (the demo recognizer was both), and they cost differently per frame.
    pre = manifest.preprocessing
    fit = "squashed" if pre.fit == "squash" else f"placed at scale {pre.scale:g}"
    model_input = f"input {manifest.input.height}x{manifest.input.width}, frames {fit}"
    lines = [
        f"### {time.strftime('%Y-%m-%d %H:%M')} — commit {commit.stdout.strip() or '?'}"
        f"{' (uncommitted changes)' if dirty.stdout.strip() else ''} — {cpu_name()}, {os.cpu_count()} CPUs",
        "",
        f"Command: `{' '.join(['.venv/bin/python tools/bench_pipeline.py', *cmd_args])}`",
        "",
        f"Recognizer `{manifest.architecture}` ({where}, {model_input}), recognizer only; "
        f"{config.source.pixel_format} frames of `{config.source.path}` (camera `{config.line.camera}`) at native "
        f"size (slot {config.source.width}x{config.source.height}), "
        f"fed as fast as the pipeline takes them; {args.rounds} interleaved rounds of {args.seconds:g} s, medians. "
        f"Load average before/after: {load_before} / {load_text()} (the machine is shared).",
        "",
        "Bare loop sweep (frames/s, " + f"{args.sweep_seconds:g} s each):",
        "",
        "| intra-op threads | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for threads in threads_set:
        row = [
            f"**{sweep[(threads, b)]:.1f}**" if (threads, b) == best else f"{sweep[(threads, b)]:.1f}" for b in batches
        ]
        lines.append(f"| {threads_label(threads)} | " + " | ".join(row) + " |")
    lines += [
        "",
        "| run | intra-op threads | batch | frames/s (median) | / best bare | CPU ms/frame | latency p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in candidates:
        fps = statistics.median(f for f, _ in bare_runs[c])
        cpu = statistics.median(u for _, u in bare_runs[c])
        name = "**best bare loop**" if c == best else "bare loop"
        lines.append(f"| {name} | {threads_label(c[0])} | {c[1]} | {fps:.1f} | {fps / bare:.3f} | {cpu:.3f} | | |")
    best_daemon: tuple[float, tuple[int, int]] = (0.0, own)
    for s, runs in daemon_runs.items():
        fps = statistics.median(d["fps"] for d in runs)
        best_daemon = max(best_daemon, (fps, s))
        p50 = statistics.median(d["latency_ms_p50"] for d in runs)
        p99 = statistics.median(d["latency_ms_p99"] for d in runs)
        cpu = statistics.median(d["cpu_ms_per_frame"] for d in runs)
        name = "daemon, config's settings" if s == own else "daemon, the bare loop's best settings"
        lines.append(
            f"| {name} | {threads_label(s[0])} | {s[1]} | {fps:.1f} | {fps / bare:.3f} | {cpu:.3f} | {p50:.1f} | "
            f"{p99:.1f} |"
        )
    runs = daemon_runs[best_daemon[1]]
    budget = {k: statistics.median(d["stage_ms_per_frame"].get(k, 0.0) for d in runs) for k in STAGES}
    frame_ms = 1e3 / best_daemon[0] if best_daemon[0] else float("nan")
    lines += [
        "",
        f"Per-frame budget of the daemon at its best ({threads_label(best_daemon[1][0])} threads, batch "
        f"{best_daemon[1][1]}): {frame_ms:.3f} ms per frame in all; by stage (thread), ms per frame: "
        + ", ".join(f"{k} {budget[k]:.3f}" for k in STAGES if k in budget)
        + " (acquire, preprocess: acquisition thread; recognizer, decision: inference thread; publish: publisher "
        "thread; the threads overlap, so the stages add up to more than the frame time when they run in parallel). "
        f"CPU per frame, all threads: daemon {statistics.median(d['cpu_ms_per_frame'] for d in runs):.3f} ms, "
        f"best bare loop {bare_cpu:.3f} ms.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "folder-replay.yaml", help="line config")
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement in a round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--sweep-seconds", type=float, default=3.0, help="per bare-loop setting in the sweep")
    p.add_argument("--threads", default="0,1,2", help="intra-op thread counts for the sweep (0 = ORT default)")
    p.add_argument("--batches", default="1,2,4,8,16", help="batch sizes for the sweep")
    p.add_argument("--candidates", type=int, default=3, help="best bare settings of the sweep measured in each round")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    config = load_config(args.config)
    if config.source.kind != "folder" or config.models.backend != "onnxruntime":
        print(f"{args.config}: the benchmark needs a folder source and the onnxruntime backend", file=sys.stderr)
        return 2
    data = resolve_path(args.config, config.source.path)
    if not data.is_dir():
        print(f"SKIPPED: data set not found at {data} (Magnetic Tile, see docs/TRAINING.md)", file=sys.stderr)
        return 0
    load_before = load_text()
    tiles = real_tiles(args.config, config, 16)
    sweep = sweep_bare(args, config, tiles)
    # The sweep is short and a neighbour's burst can flatter one setting: the best few are measured again in
    # every round, beside the daemon, and the best bare loop is the one with the highest median there.
    candidates = sorted(sweep, key=lambda k: sweep[k], reverse=True)[: args.candidates]
    own = (config.models.onnxruntime.intra_op_threads, config.pipeline.batch_size)
    bare_runs, daemon_runs = run_rounds(args, config, tiles, candidates, own)
    table = report(args, argv, config, sweep, bare_runs, daemon_runs, own, load_before)
    print(table)
    if not args.no_append:
        append(table)
    return 0


def append(table: str) -> None:
    doc = ROOT / "docs" / "BENCHMARKS.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if SECTION not in text:
        text = text.rstrip() + f"\n\n{SECTION}\n\nMeasured by `tools/bench_pipeline.py` (newest last).\n"
    start = text.index(SECTION)
    nxt = text.find("\n## ", start + len(SECTION))
    end = len(text) if nxt < 0 else nxt + 1
    text = text[:end].rstrip() + "\n\n" + table + "\n" + ("\n" + text[end:] if nxt >= 0 else "")
    doc.write_text(text)
    print(f"appended to {doc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
