"""Training plots as PNG (matplotlib, Agg backend: no display on training machines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_losses(history: list[dict[str, Any]], step_losses: list[float], path: Path, metric: str) -> None:
    """Training loss per step (raw and smoothed), validation loss and the selection metric per epoch."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    if step_losses:
        steps_per_epoch = max(len(step_losses) / max(len(history), 1), 1)
        x = np.arange(1, len(step_losses) + 1) / steps_per_epoch
        ax_loss.plot(x, step_losses, color="0.75", linewidth=0.8, label="train (step)")
        window = max(int(steps_per_epoch), 1)
        if len(step_losses) >= window > 1:
            smooth = np.convolve(step_losses, np.ones(window) / window, mode="valid")
            ax_loss.plot(x[window - 1 :], smooth, color="C0", label="train (1-epoch mean)")
    checked = [h for h in history if metric in h]  # epochs that were validated (every --val-every)
    if checked:
        ax_metric.plot([h["epoch"] + 1 for h in checked], [h[metric] for h in checked], "o-", color="C2", label=metric)
        if "val_auroc" in checked[0] and metric != "val_auroc":
            epochs = [h["epoch"] + 1 for h in checked]
            ax_metric.plot(epochs, [h["val_auroc"] for h in checked], "s--", color="C3", label="val_auroc")
        ax_metric.legend()
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_metric.set(xlabel="epoch", ylabel=metric, title="validation", ylim=(0, 1.02))
    ax_metric.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_predictions(kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]], task: str, path: Path, title: str) -> None:
    """Rows: input image, ground truth (blocks or pixels), predicted P(defect) (block map or pixel map)."""
    n = len(kept)
    fig, axes = plt.subplots(3, n, figsize=(2.4 * n, 7.2), squeeze=False)
    for col, (image, truth, prob) in enumerate(kept):
        gray = image[..., 0] if image.shape[-1] == 1 else image
        h, w = image.shape[:2]
        shown = {"cmap": "gray", "vmin": 0, "vmax": 255} if gray.ndim == 2 else {}
        axes[0, col].imshow(gray, **shown)
        if truth.ndim == 0:  # classifier: an image label
            axes[1, col].text(0.5, 0.5, "defective" if truth else "good", ha="center", va="center")
            axes[2, col].text(0.5, 0.5, f"P(defect) {float(prob):.2f}", ha="center", va="center")
        else:
            # Block maps are stretched over the image so block and pixel positions line up.
            axes[1, col].imshow(gray, **shown)
            overlay = np.ma.masked_equal((truth > 0).astype(float), 0.0)  # only defects coloured
            axes[1, col].imshow(overlay, cmap="autumn", alpha=0.6, extent=(0, w, h, 0), vmin=0, vmax=1)
            axes[2, col].imshow(prob, cmap="magma", vmin=0, vmax=1, extent=(0, w, h, 0))
        for row in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    for row, name in enumerate(("input", "truth", "P(defect)")):
        axes[row, 0].set_ylabel(name)
    fig.suptitle(f"{task}: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
