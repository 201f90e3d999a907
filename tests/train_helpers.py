"""Small synthetic data sets in the generic folder layout, for the training tests.

Uses `inspector.synth.write_dataset` (the generator the daemon's synthetic source shares) when it exists;
otherwise draws a minimal equivalent here: textured gray parts with dark scratches and pits, masks beside.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np


def make_dataset(root: Path, n: int = 24, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """Write `n` images (about half defective) to root/images, masks to root/masks, root/classes.csv."""
    try:
        from inspector.synth import write_dataset
    except ImportError:
        write_dataset = None
    if write_dataset is not None:
        write_dataset(root, n, seed=seed, size=size, defect_probability=0.5, small_fraction=0.2, channels=1)
        return root
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    h, w = size
    for i in range(n):
        image = (120 + 12 * rng.standard_normal((h, w))).clip(0, 255).astype(np.uint8)
        image = cv2.GaussianBlur(image, (3, 3), 0)
        mask = np.zeros((h, w), np.uint8)
        name = f"part{i:03d}"
        cls = "good"
        if i % 2 == 0:
            if rng.random() < 0.5:
                cls = "scratch"
                p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                cv2.line(mask, p0, p1, 255, int(rng.integers(1, 4)))
            else:
                cls = "pit"
                c = (int(rng.integers(8, w - 8)), int(rng.integers(8, h - 8)))
                cv2.circle(mask, c, int(rng.integers(2, 7)), 255, -1)
            image[mask > 0] = 25
            cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
        cv2.imwrite(str(root / "images" / f"{name}.png"), image)
        rows.append((f"{name}.png", cls))
    with (root / "classes.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("name", "class"), *rows])
    return root
