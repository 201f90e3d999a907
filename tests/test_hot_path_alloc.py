"""The hot path keeps nothing per frame and makes no frame-sized temporaries: tracemalloc over thousands of
frames of the real daemon (tools/hot_path_alloc.py, which runs 10k frames for docs/BENCHMARKS.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from hot_path_alloc import measure, tiny_line

pytestmark = pytest.mark.timeout(180)

FRAMES = 4000


def test_the_hot_path_keeps_nothing_per_frame(tmp_path):
    result = measure(tiny_line(tmp_path, rate_hz=250.0, size=320), FRAMES, warmup=800)
    assert result["frames"] >= FRAMES
    # One small object kept per frame (a 28-byte int) would be 112 KB here; what remains is the handful of
    # frames in flight at either snapshot and first-use caches.
    assert result["kept_bytes"] < 64 * 1024, result
    # A 320x320 frame is 100 KB: any frame-sized temporary during the window would raise the peak past this.
    assert result["peak_above_end_bytes"] < 64 * 1024, result
    assert result["verdicts_dropped"] == 0
