"""DistributedDataParallel through torchrun: two CPU processes on the gloo backend."""

from __future__ import annotations

import subprocess
import sys

import torch
from train_helpers import make_dataset


def test_two_process_ddp_run_keeps_replicas_identical_and_learns(tmp_path):
    data = make_dataset(tmp_path / "data", n=40, size=(64, 96), seed=2)
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "inspector.train.cli", "train", "--data", str(data), "--out", str(out),
        "--task", "recognizer", "--arch", "resnet-tiny", "--size", "64x96", "--epochs", "6", "--batch", "2",
        "--lr", "1e-3", "--lr-schedule", "constant", "--no-augment", "--crop", "64", "--threads", "1",
        "--no-plots", "--val-fraction", "0.2",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpt = torch.load(out / "last.pt", weights_only=False)
    history = ckpt["history"]
    assert ckpt["world_size"] == 2 and len(history) == 6
    # Checked on every epoch by all-gathering per-parameter checksums across the two ranks.
    assert all(h["replica_divergence"] == 0.0 for h in history), [h["replica_divergence"] for h in history]
    losses = [h["train_loss"] for h in history]  # averaged over both ranks
    assert min(losses[-2:]) < 0.8 * losses[0], losses
    assert result.stdout.count("best checkpoint:") == 1  # rank 0 alone reports
