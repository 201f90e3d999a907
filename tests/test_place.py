"""Native-resolution models (manifest `preprocessing.fit: place`) in the daemon: the frame is placed at the input's
top-left at the model's scale, blocks over the zero border never count, and boxes and areas map back to frame
pixels by the placed scale. Real tiny ONNX models, a real folder replay and a real subscriber."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_helpers import free_port, run_to_end, write_config
from tiny_models import write_tiny_recognizer, write_tiny_segmenter

from inspector.config import DecisionConfig
from inspector.decision import Decider, GridMap
from inspector.manifest import read_manifest

pytestmark = pytest.mark.timeout(60)

FRAME_H, FRAME_W = 96, 64  # smaller than the 128x128 input: at scale 1.0 it fills 3x2 of the 4x4 blocks


def _models(tmp_path: Path, threshold: float) -> tuple[Path, Path]:
    folder = tmp_path / "models"
    folder.mkdir()
    rec = write_tiny_recognizer(folder / "recognizer.onnx", size=128, threshold=threshold, place_scale=1.0)
    seg = write_tiny_segmenter(folder / "segmenter.onnx", size=128)
    return rec, seg


def _run(tmp_path: Path, threshold: float, images: list[np.ndarray]) -> list[dict]:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i:02d}.png"), img)
    port = free_port()
    source = f"  kind: folder\n  path: {folder}\n  width: {FRAME_W}\n  height: {FRAME_H}\n  loop: false\n  masks: false"
    config = write_config(
        tmp_path / "line.yaml",
        _models(tmp_path, threshold),
        source=source,
        port=port,
        extra="decision: {block_threshold: 0.5, min_area_px: 0}\n",
    )
    config.write_text(config.read_text().replace("  onnxruntime:", "  segmenter_mode: never\n  onnxruntime:"))
    verdicts = run_to_end(config, port)
    assert [v["seq"] for v in verdicts] == list(range(len(images)))
    return verdicts


def test_a_spot_is_boxed_in_frame_pixels_at_the_placed_scale(tmp_path):
    dark = np.full((FRAME_H, FRAME_W), 40, np.uint8)
    spot = dark.copy()
    cv2.circle(spot, (40, 70), 3, 250, -1)  # frame x 40, y 70: input block (row 2, column 1) at scale 1.0
    verdicts = _run(tmp_path, 180, [dark, spot])
    assert verdicts[0]["result"] == "pass" and verdicts[0]["defects"] == []
    (blob,) = verdicts[1]["defects"]
    assert verdicts[1]["result"] == "reject"
    assert blob["bbox"] == [32, 64, 32, 32] and blob["area_px"] == 32 * 32


def test_blocks_over_the_zero_border_never_count(tmp_path):
    """A model that fires on every pixel, dark or not: only the 3x2 blocks over the frame form the blob."""
    everything = np.full((FRAME_H, FRAME_W), 40, np.uint8)
    verdicts = _run(tmp_path, -1, [everything])
    (blob,) = verdicts[0]["defects"]
    assert blob["bbox"] == [0, 0, FRAME_W, FRAME_H]
    assert blob["area_px"] == 6 * 32 * 32  # 6 valid blocks; 16 if the border's 10 counted


def test_placed_grids_map_back_by_the_placed_scale(tmp_path):
    rec = write_tiny_recognizer(tmp_path / "r.onnx", size=128, place_scale=0.5)
    manifest = read_manifest(rec)
    d = Decider(DecisionConfig(block_threshold=0.5, min_area_px=0), (200, 100), manifest, None, None)
    # At scale 0.5 the 200x100 frame takes 100x50 of the input: 4x2 valid blocks of 64x64 frame pixels.
    assert d.blocks == GridMap.for_placed((200, 100), (100, 50), (128, 128), 32)
    assert (d.blocks.valid_h, d.blocks.valid_w) == (4, 2) and d.blocks.cell_h == pytest.approx(64)
    scores = np.full((4, 4), 0.9, np.float32)  # everything fires, the border too
    result, _, (blob,), _ = d.decide(scores, None)
    assert result == "reject" and blob.bbox == (0, 0, 100, 200) and blob.area_px == 8 * 64 * 64
    # A frame of another size (a replay of mixed sizes) gets its own geometry: 64x64 at scale 0.5 = 1x1 block.
    result, _, (blob,), _ = d.decide(scores, None, frame_size=(64, 64))
    assert blob.bbox == (0, 0, 64, 64) and blob.area_px == 64 * 64
