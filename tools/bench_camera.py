#!/usr/bin/env python3
"""Benchmark the GenICam source on viky.cti: frames acquired vs produced, acquisition CPU per frame, copy cost.

    .venv/bin/python tools/bench_camera.py                       # bare source, then the daemon, 20 s each
    .venv/bin/python tools/bench_camera.py --mode bare --seconds 10
    .venv/bin/python tools/bench_camera.py --mode reconnect --cycles 50   # RSS across reconnect cycles

bare: the source alone in an acquisition thread, writing into a FrameRing's slots as the daemon does.
daemon: `inspector run` in-process on the same camera settings with the recognizer (engines/demo when present,
tests/tiny_models.py otherwise); the genicam source class is wrapped to time the acquisition thread.

Produced = frames the camera made since acquisition started (its frame ids start at 1 and count every frame,
including the ones it had to drop because no buffer was queued). CPU is time.thread_time() of the acquisition
thread: "in grab" is the source's own share (fetch, conversion, re-queue); "thread" adds whatever else the
daemon's acquisition thread does per frame. Copy = the one conversion from the GenTL buffer into the ring slot.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.config import GenicamSourceConfig  # noqa: E402
from inspector.frames import CHANNELS, FrameRing  # noqa: E402
from inspector.sources.genicam.source import GenicamSource  # noqa: E402


def camera_config(args: argparse.Namespace, **over) -> GenicamSourceConfig:
    fmt = {"mono8": "Mono8"}.get(args.pixel_format, "RGBa8")
    data = dict(
        kind="genicam",
        device=args.device,
        width=args.width,
        height=args.height,
        pixel_format=args.pixel_format,
        num_buffers=args.buffers,
        features=[
            {"name": "Width", "value": args.width},
            {"name": "Height", "value": args.height},
            {"name": "PixelFormat", "value": fmt},
            {"name": "AcquisitionFrameRate", "value": float(args.rate)},
        ],
    )
    data.update(over)
    return GenicamSourceConfig(**data)


class Events:
    def __init__(self):
        self.states: list[tuple[bool, str]] = []

    def camera_state(self, connected: bool, detail: str) -> None:
        self.states.append((connected, detail))


class TimedGenicamSource(GenicamSource):
    """The genicam source, timing the thread that calls grab() (the daemon's acquisition thread)."""

    last: TimedGenicamSource | None = None

    def __init__(self, cfg, events):
        super().__init__(cfg, events)
        TimedGenicamSource.last = self
        self.cpu_in_grab = 0.0
        self.cpu_first: float | None = None
        self.cpu_last = 0.0
        self.first_id: int | None = None
        self.last_id = 0
        self.grabbed = 0

    def grab(self, out, timeout_s):
        c0 = time.thread_time()
        if self.cpu_first is None:
            self.cpu_first = c0
        g = super().grab(out, timeout_s)
        c1 = time.thread_time()
        if g is not None:
            self.cpu_in_grab += c1 - c0
            self.cpu_last = c1
            self.grabbed += 1
            self.last_id = g.camera_frame_id
            if self.first_id is None:
                self.first_id = g.camera_frame_id
        return g


def report(name: str, src: TimedGenicamSource, wall_s: float, extra: dict | None = None) -> dict:
    st = src.stats
    frames = max(src.grabbed, 1)
    produced = src.last_id  # viky's frame ids start at 1 with acquisition and count every frame it made
    result = {
        "mode": name,
        "seconds": round(wall_s, 1),
        "produced": produced,
        "acquired": src.grabbed,
        "camera_drops": st.camera_drops,
        "incomplete_buffers": st.incomplete_buffers,
        "acquired_fps": round(src.grabbed / wall_s, 1),
        "cpu_in_grab_us_per_frame": round(src.cpu_in_grab / frames * 1e6, 1),
        "cpu_thread_us_per_frame": round((src.cpu_last - (src.cpu_first or 0)) / frames * 1e6, 1),
        "copy_us_per_frame": round(st.convert_ns / max(st.frames, 1) / 1e3, 1),
    }
    result.update(extra or {})
    print(json.dumps(result), flush=True)
    return result


def bench_bare(args: argparse.Namespace) -> dict:
    src = TimedGenicamSource(camera_config(args), Events())
    src.open()
    ring = FrameRing(32, args.height, args.width, CHANNELS[args.pixel_format])
    stop = threading.Event()

    def acquire():
        slot = 0
        while not stop.is_set():
            # Like the daemon: take a free slot, write the frame into it; here it is released at once.
            src.grab(ring.view(slot), 0.2)
            slot = (slot + 1) % ring.slots

    src.start()
    thread = threading.Thread(target=acquire, name="acquisition")
    t0 = time.monotonic()
    thread.start()
    time.sleep(args.seconds)
    stop.set()
    thread.join()
    wall = time.monotonic() - t0
    src.stop()
    src.close()
    return report("bare source", src, wall)


def bench_daemon(args: argparse.Namespace) -> dict:
    """`inspector run` in-process (recognizer on every frame, segmenter gated), the genicam source timed."""
    import tempfile

    import inspector.sources as sources

    try:
        from inspector.cli import main as inspector_main
    except ImportError as exc:
        print(json.dumps({"mode": "daemon", "skipped": f"the daemon's CLI is not available: {exc}"}), flush=True)
        return {}
    demo = ROOT / "engines" / "demo"
    with tempfile.TemporaryDirectory() as tmp:
        if (demo / "recognizer.onnx").exists() and (demo / "segmenter.onnx").exists():
            recognizer, segmenter, models = demo / "recognizer.onnx", demo / "segmenter.onnx", "engines/demo"
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_models import write_tiny_models

            recognizer, segmenter = write_tiny_models(Path(tmp))
            models = "tests/tiny_models.py"
        cfg = camera_config(args)
        config = Path(tmp) / "bench.yaml"
        features = "".join(f"\n    - {{name: {f.name}, value: {f.value!r}}}" for f in cfg.features)
        config.write_text(
            f"""version: 1
line: {{name: bench, camera: viky}}
source:
  kind: genicam
  device: "{args.device}"
  width: {args.width}
  height: {args.height}
  pixel_format: {args.pixel_format}
  num_buffers: {args.buffers}
  features:{features}
models:
  recognizer: {{path: {recognizer}}}
  segmenter: {{path: {segmenter}}}
publish: {{actuator: null, broadcast: {{bind: "tcp://127.0.0.1:*"}}}}
metrics: {{enabled: false}}
""".replace("'", '"')
        )
        sources.SOURCES["genicam"] = lambda: TimedGenicamSource
        frames = int(args.seconds * args.rate)
        t0 = time.monotonic()
        rc = inspector_main(["run", "--config", str(config), "--max-frames", str(frames)])
        wall = time.monotonic() - t0
    src = TimedGenicamSource.last
    if src is None:
        print(json.dumps({"mode": "daemon", "error": f"inspector run exited {rc} without opening the camera"}))
        return {}
    return report("daemon + recognizer", src, wall, {"models": models, "exit_code": rc})


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_reconnect(args: argparse.Namespace) -> dict:
    """RSS across reconnect cycles: each destroys the device under the running source (DevClose)."""
    logging.getLogger("inspector.sources.genicam.source").setLevel(logging.ERROR)  # one warning per cycle otherwise
    src = GenicamSource(camera_config(args, reconnect_backoff_ms=[1]), Events())
    src.open()
    src.start()
    out = np.zeros((args.height, args.width, CHANNELS[args.pixel_format]), np.uint8)

    def cycle():
        while src.grab(out, 0.5) is None:
            pass
        src._ia.device.module.close()  # destroy the device module: all its handles become invalid
        while src.grab(out, 0.5) is None:  # the source reconnects and frames flow again
            pass

    for _ in range(5):  # warm-up: first allocations, caches
        cycle()
    before = rss_mb()
    t0 = time.monotonic()
    samples = []
    for i in range(args.cycles):
        cycle()
        if (i + 1) % 10 == 0:
            samples.append(round(rss_mb(), 1))
    wall = time.monotonic() - t0
    after = rss_mb()
    src.stop()
    src.close()
    result = {
        "mode": "reconnect",
        "cycles": args.cycles,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "growth_mb_per_cycle": round((after - before) / args.cycles, 3),
        "rss_every_10_cycles_mb": samples,
        "reconnect_s_mean": round(wall / args.cycles, 3),
        "losses": src.stats.losses,
        "reconnects": src.stats.reconnects,
    }
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["both", "bare", "daemon", "reconnect"], default="both")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--width", type=int, default=800)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--rate", type=float, default=200.0, help="AcquisitionFrameRate (viky: at most 200)")
    p.add_argument("--pixel-format", choices=["mono8", "rgb8", "bgr8"], default="mono8")
    p.add_argument("--buffers", type=int, default=16)
    p.add_argument("--device", default="0")
    p.add_argument("--cycles", type=int, default=50, help="reconnect cycles (--mode reconnect)")
    args = p.parse_args(argv)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", flush=True)
    if args.mode in ("both", "bare"):
        bench_bare(args)
    if args.mode in ("both", "daemon"):
        bench_daemon(args)
    if args.mode == "reconnect":
        bench_reconnect(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
