#!/usr/bin/env python3
"""Pipeline benchmark on the CPU: the raw engine side by side with the whole daemon, in one run.

    .venv/bin/python tools/bench_pipeline.py                          # configs/folder-replay.yaml, 20 s each
    .venv/bin/python tools/bench_pipeline.py --seconds 10 --no-append

Source: the folder replay of Magnetic Tile (../shared/datasets/magnetic-tile), preloaded into memory and fed as
fast as inference takes frames (`rate_hz: null`), so the number is the pipeline's, not the disk's.

- raw engine: the recognizer (same model file, same backend settings and thread count, same batch size) called
  in a bare loop of `backend.run(batch)` on inputs preprocessed once beforehand from the same tiles.
- daemon, recognizer only (`segmenter_mode: never`): the same work per frame as the raw engine, plus what the
  daemon adds: acquisition into the ring, preprocessing, decision, publishing. Target: >= 0.9x raw.
- daemon, cascade as configured (gated): for reference, against the raw cost of the same work (the recognizer on
  every frame plus the segmenter on the fraction of frames the daemon actually segmented).

Prints a markdown table and (unless --no-append) appends it with the command, date, commit and CPU to
docs/BENCHMARKS.md under "Pipeline on the CPU". Skips with a clear message when the data set is absent.
"""

from __future__ import annotations

import argparse
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon_bench import benchmark  # noqa: E402

from inspector.backends import backend_class  # noqa: E402
from inspector.config import load_config, resolve_path  # noqa: E402
from inspector.daemon import source_config  # noqa: E402
from inspector.preprocess import Preprocessor  # noqa: E402
from inspector.runtime import backend_settings, load_model_manifest  # noqa: E402
from inspector.sources import source_class  # noqa: E402

SECTION = "## Pipeline on the CPU"


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


def raw_engine(config_path: Path, role: str, seconds: float) -> float:
    """Frames/s of a bare loop of backend.run(batch) on preprocessed tiles (from the same replay source)."""
    config = load_config(config_path)
    spec = config.models.recognizer if role == "recognizer" else config.models.segmenter
    path = resolve_path(config_path, spec.path)
    batch = config.pipeline.batch_size
    settings = backend_settings(config)
    manifest = load_model_manifest(config.models.backend, path, settings, batch)
    backend = backend_class(config.models.backend)(path, manifest, settings, batch)
    try:
        src_cfg = source_config(config, config_path)
        source = source_class(src_cfg.kind)(src_cfg, _NoEvents())
        source.open()
        source.start()
        frame = np.zeros((src_cfg.height, src_cfg.width, 1 if src_cfg.pixel_format == "mono8" else 3), np.uint8)
        pre = Preprocessor(
            batch,
            (manifest.input.height, manifest.input.width),
            manifest.preprocessing.color,
            src_cfg.pixel_format,
            manifest.preprocessing.resize,
        )
        pre.buffer = backend.input_buffer()
        for i in range(batch):  # real tiles, preprocessed exactly as the daemon does
            source.grab(frame, 1.0)
            pre.put(i, frame)
        source.stop()
        source.close()
        for _ in range(config.pipeline.warmup_runs + 2):
            backend.run(batch)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            backend.run(batch)
            n += batch
        return n / (time.perf_counter() - t0)
    finally:
        backend.close()


def recognizer_name(config_path: Path) -> str:
    """The recognizer's architecture and file, from its manifest: which model a result row is about."""
    config = load_config(config_path)
    path = resolve_path(config_path, config.models.recognizer.path).resolve()
    manifest = load_model_manifest(config.models.backend, path, backend_settings(config), config.pipeline.batch_size)
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"`{manifest.architecture}` ({where})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "folder-replay.yaml")
    p.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    config = load_config(args.config)
    if config.source.kind != "folder":
        print(f"{args.config}: the benchmark needs a folder source", file=sys.stderr)
        return 2
    data = resolve_path(args.config, config.source.path)
    if not data.is_dir():
        print(f"SKIPPED: data set not found at {data} (Magnetic Tile, see docs/TRAINING.md)", file=sys.stderr)
        return 0

    print(f"raw recognizer engine, {args.seconds:g} s ...", file=sys.stderr)
    raw_rec = raw_engine(args.config, "recognizer", args.seconds)
    print(f"daemon, recognizer only, {args.seconds:g} s ...", file=sys.stderr)
    never = benchmark(args.config, args.seconds, update={"models": {"segmenter_mode": "never"}})
    rows = [
        ("recognizer only (`segmenter_mode: never`)", raw_rec, never),
    ]
    if config.models.segmenter_mode != "never":
        print(f"raw segmenter engine, {args.seconds:g} s ...", file=sys.stderr)
        raw_seg = raw_engine(args.config, "segmenter", args.seconds)
        print(f"daemon, cascade {config.models.segmenter_mode}, {args.seconds:g} s ...", file=sys.stderr)
        cascade = benchmark(args.config, args.seconds)
        frac = cascade["segmented"] / max(1, cascade["published"])
        raw_cascade = 1.0 / (1.0 / raw_rec + frac / raw_seg)
        rows.append(
            (f"cascade {config.models.segmenter_mode} (segmenter on {100 * frac:.0f}% of frames)", raw_cascade, cascade)
        )

    b = config.pipeline.batch_size
    cmd_args = argv if argv is not None else sys.argv[1:]
    threads = config.models.onnxruntime.intra_op_threads or "physical cores"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    lines = [
        f"### {time.strftime('%Y-%m-%d %H:%M')} — commit {commit.stdout.strip() or '?'} — {cpu_name()}",
        "",
        f"Command: `{' '.join(['.venv/bin/python tools/bench_pipeline.py', *cmd_args])}`",
        "",
        f"Config `{args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}`: "
        f"{config.models.backend}, batch {b}, intra-op threads {threads}, ring {config.pipeline.ring_slots} slots, "
        f"{config.source.width}x{config.source.height} {config.source.pixel_format} tiles preloaded; "
        f"{args.seconds:g} s per measurement; recognizer {recognizer_name(args.config)}.",
        "",
        "| work | raw engine frames/s | daemon frames/s | daemon / raw | acquisition-to-publish p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, raw, d in rows:
        lines.append(
            f"| {name} | {raw:.1f} | {d['fps']:.1f} | {d['fps'] / raw:.2f} | "
            f"{d['latency_ms_p50']:.1f} | {d['latency_ms_p99']:.1f} |"
        )
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rows[-1][2]["by_reason"].items()))
    lines += ["", f"Verdicts in the last window by reason: {reasons}; mean batch {rows[-1][2]['mean_batch']:.2f}.", ""]
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        doc = ROOT / "docs" / "BENCHMARKS.md"
        text = doc.read_text() if doc.exists() else "# Benchmarks\n"
        if SECTION not in text:
            text = text.rstrip() + f"\n\n{SECTION}\n\nMeasured by `tools/bench_pipeline.py` (newest last).\n"
        # Append at the end of the section (before the next "## " heading, if any).
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:end].rstrip() + "\n\n" + table + "\n" + ("\n" + text[end:] if nxt >= 0 else "")
        doc.write_text(text)
        print(f"appended to {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
