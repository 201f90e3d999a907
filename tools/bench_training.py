#!/usr/bin/env python3
"""Training throughput of the same model and settings, before and after the data-path rewrite, in one run.

    tools/bench_training.py --old-commit 0940760 --old-python /work/venv-old/bin/python \\
        [--data ../shared/datasets/magnetic-tile] [--steps 40] [--rounds 3] [--threads 2] [--amp] [--nchw]

"Before" is the training code of `--old-commit` (checked out into a temporary git worktree) run by
`--old-python`, an interpreter that has that commit's dependencies (torch 2.14.1 + torchvision 0.29.1: the old
code imports torchvision); "after" is this checkout with `sys.executable`. Both train the recognizer
(resnet-tiny, 224x224 squashed gray input, the paper's augmentations on, 16 images per step: 8 defective/normal
pairs before, a batch of 16 after) for `--steps` steps on the same data, alternating old and new `--rounds`
times so that a machine whose load drifts affects both alike. The new recipe's network has two additions the
old one lacks (a dense auxiliary head, in-network standardisation); `--same-network` adds a variant without
them, so that one row compares the same layers. The old run uses one DataLoader worker (its documented setting
on 2 cores); the new one needs none.

The figure compared is steps/s of the training loop, timed the same way for both: between optimizer steps,
the first few left out as warm-up. (Until 2026-12-03 the old code's rate came from its history, whose time
included start-up and validation and so understated it; figures in docs/BENCHMARKS.md before that date carry
that bias.) Also the wall time of the whole command (start-up, decoding, validation included).

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


# Both codes run under this wrapper, which stamps the time of every optimizer step (a global hook of
# torch.optim, in both torch versions) and writes the stamps to $BENCH_STEPS. Steps/s is taken between the
# stamps, so it is the same measure for both: training steps only, without start-up, decoding, a DataLoader
# worker's start or validation (the old code's history could not separate those from its steps).
TIMED = """
import json, os, runpy, sys, time
import torch.optim.optimizer as o
stamps = []
o.register_optimizer_step_post_hook(lambda *a: stamps.append(time.perf_counter()))
sys.argv = ["inspector-train", *sys.argv[1:]]
try:
    runpy.run_module("inspector.train.cli", run_name="__main__")
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
with open(os.environ["BENCH_STEPS"], "w") as f:
    json.dump(stamps, f)
"""

# The first steps build oneDNN's kernels for each new shape and fill caches: left out of the rate.
WARMUP_STEPS = 5


def steps_per_s(stamps_file: Path) -> tuple[float, int]:
    """-> (steps/s after the warm-up steps, steps run)."""
    stamps = json.loads(stamps_file.read_text())
    if len(stamps) < WARMUP_STEPS + 2:
        raise SystemExit(f"only {len(stamps)} training steps ran; give --steps above {WARMUP_STEPS + 1}")
    timed = stamps[WARMUP_STEPS:]
    return (len(timed) - 1) / (timed[-1] - timed[0]), len(stamps)


LABELS = {
    "new": "after",
    "amp": "after, --amp (bfloat16 autocast)",
    "nchw": "after, --no-channels-last (NCHW)",
    "same": "after, --amp, the old code's network (--aux-weight 0 --no-standardize)",
}


def print_table(rows: dict[str, list[tuple[float, float]]], old_commit: str) -> None:
    """Medians per variant, each with its ratio to the old code."""
    old_sps = statistics.median(s for s, _ in rows["old"])
    old_wall = statistics.median(w for _, w in rows["old"])
    print("| code | training steps/s (median) | images/s | whole command, s (median) |")
    print("|---|---|---|---|")
    print(f"| before ({old_commit}) | {old_sps:.2f} | {16 * old_sps:.1f} | {old_wall:.0f} |")
    for which, label in LABELS.items():
        if which not in rows:
            continue
        sps = statistics.median(s for s, _ in rows[which])
        wall = statistics.median(w for _, w in rows[which])
        print(f"| {label} | {sps:.2f} | {16 * sps:.1f} | {wall:.0f} |")
        print(f"| ratio to before | **{sps / old_sps:.2f}x** | | {old_wall / wall:.2f}x faster |")


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
    p.add_argument(
        "--same-network",
        action="store_true",
        help="also the new code with --amp on the old code's network: no dense auxiliary head, no in-network "
        "standardisation (--aux-weight 0 --no-standardize), so both sides train the same layers",
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
    variants += ("same",) if args.same_network else ()
    flags = {
        "new": [],
        "amp": ["--amp"],
        "nchw": ["--no-channels-last"],
        "same": ["--amp", "--aux-weight", "0", "--no-standardize"],
    }
    rows: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    try:
        for r in range(args.rounds):
            for which in variants:
                out = tmp / f"{which}{r}"
                stamps = tmp / f"{which}{r}.steps.json"
                if which == "old":
                    cmd = [str(args.old_python), "-c", TIMED, "train", "--data", str(args.data),
                           "--out", str(out), *common, "--batch", "8", "--workers", "1"]  # fmt: skip
                    wall = run(cmd, old_tree, {**env_old, "BENCH_STEPS": str(stamps)})
                else:
                    cmd = [sys.executable, "-c", TIMED, "train", "--data", str(args.data),
                           "--out", str(out), *common, "--batch", "16", "--scale", "squash"]  # fmt: skip
                    wall = run(cmd + flags[which], ROOT, {**env_new, "BENCH_STEPS": str(stamps)})
                sps, ran = steps_per_s(stamps)
                if ran != args.steps:
                    # The old code stops an epoch after one pass over its defective images, whatever --steps says.
                    print(f"note: {which} ran {ran} steps, not {args.steps}", file=sys.stderr)
                rows[which].append((sps, wall))
                print(f"round {r + 1} {which}: {sps:.2f} steps/s ({ran} steps), {wall:.0f} s wall", file=sys.stderr)
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
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"command: `{' '.join(sys.argv)}`")
    print(f"commits: before {args.old_commit}, after {head.stdout.strip()}; data {args.data.name}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.threads} torch threads; "
          f"medians of {args.rounds} alternating rounds of {args.steps} steps (16 images each), steps/s timed "
          f"between optimizer steps after the first {WARMUP_STEPS}")  # fmt: skip
    print()
    print_table(rows, args.old_commit)
    if native:
        print()
        print("| recognizer, native resolution, whole images | steps/s | images/s |")
        print("|---|---|---|")
        for arch, sps, ips in native:
            print(f"| {arch} | {sps:.2f} | {ips:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
