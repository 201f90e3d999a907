#!/usr/bin/env python3
"""GPU benchmark: engine-only throughput/latency at batch 1 and the best batch, CPU vs GPU preprocessing, and
the daemon's throughput and acquisition-to-verdict latency on the in-memory replay source, with their ratio.

    tools/bench_gpu.py --backend tensorrt --model recognizer=rec.fp16.b16.engine --model segmenter=seg.fp16.b8.engine \
        --frame 2048x2448x1 --out docs/gpu-results

- engine-only: `backend.run(n)` on a filled input buffer (upload + inference + download + synchronize), for
  every batch size 1, 2, 4, ... up to the engine's maximum; "best" is the highest frames/s.
- preprocessing: per batch at the best size, (a) CPU: `inspector.preprocess.Preprocessor` resizes raw frames
  into the pinned input, then run; (b) GPU: raw frames into the pinned frame buffer, upload + resize kernel +
  inference in one `run` (`enable_gpu_resize`). Same frames, same engine.
- daemon: `tools/daemon_bench.benchmark(config_path, seconds)` (the in-process daemon), on the in-memory
  folder source; reported as frames/s and acquisition-to-verdict p50/p99, and daemon/engine-only ratio
  (target >= 0.9). Without --config the section says "not measured" — never a made-up number.

Results: JSON + Markdown under --out, and the Markdown is what docs/BENCHMARKS.md's GPU section quotes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from inspector.backends import backend_class
from inspector.config import TensorRTSettings
from inspector.manifest import read_manifest


def _stats(samples_ms: list[float], n: int) -> dict:
    a = np.asarray(samples_ms)
    return {
        "batch": n,
        "fps": float(n * 1000.0 / a.mean()),
        "latency_ms_p50": float(np.percentile(a, 50)),
        "latency_ms_p99": float(np.percentile(a, 99)),
        "runs": len(a),
    }


def _time(fn, n: int, seconds: float, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 20:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return _stats(samples, n)


def bench_model(kind: str, path: Path, max_batch: int, frame: tuple[int, int, int] | None, seconds: float) -> dict:
    manifest = read_manifest(path)
    settings = TensorRTSettings()
    backend = backend_class(kind)(path, manifest, settings, max_batch)
    out: dict = {"model": str(path), "task": manifest.task, "engine_only": []}
    try:
        rng = np.random.default_rng(0)
        backend.input_buffer()[:] = rng.integers(0, 256, backend.input_buffer().shape, dtype=np.uint8)
        sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= max_batch]
        if max_batch not in sizes:
            sizes.append(max_batch)
        for n in sizes:
            out["engine_only"].append(_time(lambda n=n: backend.run(n), n, seconds))
        best = max(out["engine_only"], key=lambda r: r["fps"])
        out["batch1"] = out["engine_only"][0]
        out["best"] = best
        if frame is not None:
            out["preprocess"] = bench_preprocess(backend, manifest, frame, best["batch"], seconds)
    finally:
        backend.close()
    return out


def bench_preprocess(backend, manifest, frame: tuple[int, int, int], n: int, seconds: float) -> dict:
    from inspector.preprocess import Preprocessor

    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (n, *frame), dtype=np.uint8)
    fmt = "mono8" if frame[2] == 1 else "bgr8"
    pre = Preprocessor.for_model(manifest, n, fmt)
    pre.buffer = backend.input_buffer()  # write straight into the pinned input, as the daemon does

    def cpu():
        for i in range(n):
            pre.put(i, raw[i])
        backend.run(n)

    result = {"frame": list(frame), "batch": n, "cpu_resize": _time(cpu, n, seconds)}
    try:
        frames = backend.enable_gpu_resize(frame, fmt)
    except Exception as exc:  # e.g. enlarging with area, or NVRTC missing: report, do not guess
        result["gpu_resize"] = {"error": str(exc)}
        return result

    def gpu():
        frames[:n] = raw  # the daemon's source would write here directly; the copy is counted against us
        backend.run(n)

    result["gpu_resize"] = _time(gpu, n, seconds)
    return result


def bench_daemon(config: Path | None, seconds: float) -> dict:
    if config is None:
        return {"measured": False, "why": "no --config given"}
    from daemon_bench import benchmark

    result = benchmark(config, seconds)  # fps, latency_ms_p50, latency_ms_p99, ...
    return {"measured": True, **result}


def markdown(report: dict) -> str:
    lines = [f"### GPU benchmark: {report['backend']} on {report['device']} ({report['created']})", ""]
    lines.append(f"Command: `{report['command']}`")
    lines += ["", "| model | batch | frames/s | latency p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for m in report["models"]:
        for r in m["engine_only"]:
            mark = " (best)" if r == m["best"] else ""
            p50, p99 = r["latency_ms_p50"], r["latency_ms_p99"]
            lines.append(f"| {m['task']} | {r['batch']}{mark} | {r['fps']:.1f} | {p50:.2f} | {p99:.2f} |")
    for m in report["models"]:
        p = m.get("preprocess")
        if p:
            g = p["gpu_resize"]
            gtxt = f"{g['fps']:.1f} fps, p50 {g['latency_ms_p50']:.2f} ms" if "fps" in g else f"failed: {g['error']}"
            c = p["cpu_resize"]
            lines.append(
                f"\n{m['task']} preprocessing, frame {'x'.join(map(str, p['frame']))}, batch {p['batch']}: "
                f"CPU resize {c['fps']:.1f} fps (p50 {c['latency_ms_p50']:.2f} ms); GPU resize {gtxt}"
            )
    d = report["daemon"]
    if d.get("measured"):
        engine = min(m["best"]["fps"] for m in report["models"])
        lines.append(
            f"\nDaemon: {d['fps']:.1f} frames/s, acquisition-to-verdict p50 {d['latency_ms_p50']:.1f} ms, "
            f"p99 {d['latency_ms_p99']:.1f} ms; daemon / engine-only = {d['fps'] / engine:.2f} (target ≥ 0.90)"
        )
    else:
        lines.append(f"\nDaemon: not measured ({d['why']}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["tensorrt", "cuda"], required=True)
    p.add_argument("--model", action="append", required=True, help="TASK=PATH (engine for tensorrt, ONNX for cuda)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--frame", help="raw camera frame HxWxC for the preprocessing comparison, e.g. 2048x2448x1")
    p.add_argument("--config", type=Path, help="line config for the daemon measurement (in-memory folder source)")
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    p.add_argument("--out", type=Path, help="folder for bench-<backend>.json/.md")
    args = p.parse_args(argv)
    from inspector.backends.gpu_memory import device_info

    frame = tuple(int(v) for v in args.frame.split("x")) if args.frame else None
    report = {
        "backend": args.backend,
        "device": device_info(0).name,
        "host": platform.node(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["tools/bench_gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "models": [],
    }
    for spec in args.model:
        path = spec.partition("=")[2] or spec  # TASK= is for the reader; the manifest says the task
        max_batch = args.max_batch
        manifest = read_manifest(path)
        if manifest.tensorrt is not None:
            max_batch = min(max_batch, manifest.tensorrt.profile.max)
        report["models"].append(bench_model(args.backend, Path(path), max_batch, frame, args.seconds))
    report["daemon"] = bench_daemon(args.config, max(args.seconds * 5, 10.0))
    text = markdown(report)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"bench-{args.backend}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"bench-{args.backend}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
