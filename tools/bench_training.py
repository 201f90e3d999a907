#!/usr/bin/env python3
"""Training throughput of the same model and settings, before and after the data-path rewrite, in one run.

    tools/bench_training.py --old-commit 0940760 --old-python /work/venv-old/bin/python \\
        [--data ../shared/datasets/magnetic-tile] [--steps 40] [--rounds 3] [--threads 2] [--amp] [--nchw]

"Before" is the training code of `--old-commit` (checked out into a temporary git worktree) run by
`--old-python`, an interpreter that has that commit's dependencies (torch 2.14.1 + torchvision 0.29.1: the old
code imports torchvision); "after" is this checkout with `sys.executable`. Both train the same network (the
recognizer, resnet-tiny, 224x224 squashed gray input, the paper's augmentations on, 16 images per step: 8
defective/normal pairs before, a batch of 16 after) for `--steps` steps on the same data, alternating old and
new `--rounds` times so that a machine whose load drifts affects both alike. The figure compared is steps/s of
the training loop (from each run's history: an epoch's steps over its wall time, validation excluded); also the
wall time of the whole command (start-up, decoding, validation included). The old run uses one DataLoader
worker (its documented setting on 2 cores); the new one needs none.

A second table (`--native`) measures the new recipe's default — whole images at native resolution — for the
ladder's models (images/s), which is what the CV runs cost.

Prints a Markdown table with medians and ratios, and the command, commits and hardware; docs/BENCHMARKS.md
keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def steps_per_s(out: Path, steps: int) -> float:
    history = json.loads((out / "history.json").read_text())
    h = history[-1]
    if "steps_per_s" in h:
        return float(h["steps_per_s"])
    return steps / float(h["seconds"] - (h.get("val_seconds") or 0.0))  # old history: training + validation time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-commit", default="0940760")
    p.add_argument("--old-python", required=True, type=Path)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "magnetic-tile")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--native", action="store_true", help="also the ladder at native resolution (new code only)")
    p.add_argument("--amp", action="store_true", help="also the new code with --amp (bfloat16 autocast on the CPU)")
    p.add_argument(
        "--nchw", action="store_true", help="also the new code in the NCHW layout (--no-channels-last, the old layout)"
    )
    args = p.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"data set not found: {args.data}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    old_tree = tmp / "old"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), args.old_commit],
                   check=True, capture_output=True)  # fmt: skip
    env_old = {**os.environ, "PYTHONPATH": str(old_tree), "OMP_NUM_THREADS": str(args.threads)}
    env_new = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    common = ["--task", "recognizer", "--arch", "resnet-tiny", "--size", "224", "--epochs", "1",
              "--steps-per-epoch", str(args.steps), "--threads", str(args.threads), "--no-plots",
              "--seed", "0"]  # fmt: skip
    variants = ("old", "new") + (("amp",) if args.amp else ()) + (("nchw",) if args.nchw else ())
    flags = {"new": [], "amp": ["--amp"], "nchw": ["--no-channels-last"]}
    rows: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    try:
        for r in range(args.rounds):
            for which in variants:
                out = tmp / f"{which}{r}"
                if which == "old":
                    cmd = [str(args.old_python), "-m", "inspector.train.cli", "train", "--data", str(args.data),
                           "--out", str(out), *common, "--batch", "8", "--workers", "1"]  # fmt: skip
                    wall = run(cmd, old_tree, env_old)
                else:
                    cmd = [sys.executable, "-m", "inspector.train.cli", "train", "--data", str(args.data),
                           "--out", str(out), *common, "--batch", "16", "--scale", "squash"]  # fmt: skip
                    wall = run(cmd + flags[which], ROOT, env_new)
                rows[which].append((steps_per_s(out, args.steps), wall))
                print(f"round {r + 1} {which}: {rows[which][-1][0]:.2f} steps/s, {wall:.0f} s wall", file=sys.stderr)
        native = []
        if args.native:
            for arch in ("resnet-tiny", "resnet-small"):
                out = tmp / f"native-{arch}"
                cmd = [sys.executable, "-m", "inspector.train.cli", "train", "--data", str(args.data), "--out",
                       str(out), "--task", "recognizer", "--arch", arch, "--epochs", "1", "--steps-per-epoch",
                       str(args.steps), "--threads", str(args.threads), "--no-plots", "--batch", "16"]  # fmt: skip
                run(cmd, ROOT, env_new)
                h = json.loads((out / "history.json").read_text())[-1]
                native.append((arch, h["steps_per_s"], h["images_per_s"]))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    old_sps = statistics.median(s for s, _ in rows["old"])
    new_sps = statistics.median(s for s, _ in rows["new"])
    old_wall = statistics.median(w for _, w in rows["old"])
    new_wall = statistics.median(w for _, w in rows["new"])
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"command: `{' '.join(sys.argv)}`")
    print(f"commits: before {args.old_commit}, after {head.stdout.strip()}; data {args.data.name}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.threads} torch threads; "
          f"medians of {args.rounds} alternating rounds of {args.steps} steps (16 images each)")  # fmt: skip
    print()
    print("| code | training steps/s (median) | images/s | whole command, s (median) |")
    print("|---|---|---|---|")
    print(f"| before ({args.old_commit}) | {old_sps:.2f} | {16 * old_sps:.1f} | {old_wall:.0f} |")
    print(f"| after | {new_sps:.2f} | {16 * new_sps:.1f} | {new_wall:.0f} |")
    print(f"| ratio after / before | **{new_sps / old_sps:.2f}x** | | {old_wall / new_wall:.2f}x faster |")
    if args.amp:
        amp_sps = statistics.median(s for s, _ in rows["amp"])
        amp_wall = statistics.median(w for _, w in rows["amp"])
        print(f"| after, --amp (bfloat16 autocast) | {amp_sps:.2f} | {16 * amp_sps:.1f} | {amp_wall:.0f} |")
        print(f"| ratio after --amp / before | **{amp_sps / old_sps:.2f}x** | | {old_wall / amp_wall:.2f}x faster |")
    if args.nchw:
        nchw_sps = statistics.median(s for s, _ in rows["nchw"])
        nchw_wall = statistics.median(w for _, w in rows["nchw"])
        print(f"| after, --no-channels-last (NCHW) | {nchw_sps:.2f} | {16 * nchw_sps:.1f} | {nchw_wall:.0f} |")
        print(f"| ratio after / after NCHW | **{new_sps / nchw_sps:.2f}x** | | |")
    if native:
        print()
        print("| recognizer, native resolution, whole images | steps/s | images/s |")
        print("|---|---|---|")
        for arch, sps, ips in native:
            print(f"| {arch} | {sps:.2f} | {ips:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
