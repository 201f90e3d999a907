"""Helpers for the archive tests: the demo models' manifests and config, score maps shaped like theirs, and
frames decided by the real Decider (so archived decisions are real ones)."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import cv2
import numpy as np

from inspector.archive.writer import ArchiveContext
from inspector.config import ArchiveConfig, Config, load_config
from inspector.decision import Decider
from inspector.frames import Reason, Verdict
from inspector.manifest import ModelManifest, read_manifest

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEMO_MODELS = REPO / "engines" / "demo"


@functools.cache  # read once: score_maps asks for every frame
def demo_manifests() -> tuple[ModelManifest, ModelManifest]:
    return (
        read_manifest(DEMO_MODELS / "recognizer.onnx", verify_hash=False),
        read_manifest(DEMO_MODELS / "segmenter.onnx", verify_hash=False),
    )


@functools.cache
def demo_block_threshold() -> float:
    return float(load_config(DEMO_CONFIG).decision.block_threshold)


def demo_config(root: Path | None = None, **archive) -> Config:
    config = load_config(DEMO_CONFIG)
    fields = {"enabled": root is not None, "path": str(root) if root else None, **archive}
    return config.model_copy(update={"archive": ArchiveConfig(**fields)})


def context(config: Config) -> ArchiveContext:
    rec, seg = demo_manifests()
    mode = config.models.segmenter_mode
    return ArchiveContext.build(config, config.config_hash(), rec, seg if mode != "never" else None)


def decider(config: Config) -> Decider:
    rec, seg = demo_manifests()
    mode = config.models.segmenter_mode
    return Decider(
        config.decision, (config.source.height, config.source.width), rec, seg if mode != "never" else None, None
    )


def score_maps(rng: np.random.Generator, defective: bool) -> tuple[np.ndarray, np.ndarray]:
    """Block scores and pixel scores shaped like the demo models' outputs (from their manifests: the grid and
    the segmenter's classes x input): background noise below and around the pixel floor, and on defective frames
    one blob of a random class with strong probabilities, its block flagged."""
    rec, seg = demo_manifests()
    grid = rec.grid
    classes_n, h, w = (int(d) for d in seg.output("pixel_scores").shape[1:])
    # Normal blocks well below the demo's block threshold (as a trained recognizer's mostly are), whatever it is.
    block = (rng.random(grid) * (0.6 * demo_block_threshold())).astype(np.float32)
    # Mostly near 0 like a trained segmenter's background, with ~1% of pixels above a 0.05 floor.
    defect = np.minimum(rng.exponential(0.011, (h, w)), 0.3).astype(np.float32)
    classes = rng.dirichlet(np.ones(classes_n - 1), size=(h, w)).astype(np.float32)
    if defective:
        # 20..200 and radius 2..14 on a 224x224 map (the demo segmenter's input), scaled to this map: inside
        # it, off its edges.
        y, x = (int(v) for v in rng.integers(20, 200, 2) * np.array([h, w]) // 224)
        r = int(rng.integers(2, 14))
        blob = np.zeros((h, w), np.uint8)
        cv2.circle(blob, (x, y), r, 1, -1)
        inside = blob > 0
        defect[inside] = (0.4 + 0.59 * rng.random(int(inside.sum()))).astype(np.float32)
        main = int(rng.integers(0, classes_n - 1))
        classes[inside] *= 0.2
        classes[inside, main] += 0.8
        # Both maps cover the whole frame, so the blob's block is its place scaled to the grid.
        block[y * grid[0] // h, x * grid[1] // w] = np.float32(0.8 + 0.2 * rng.random())
    pixel = np.empty((classes_n, h, w), np.float32)
    pixel[0] = 1.0 - defect
    pixel[1:] = np.moveaxis(classes, 2, 0) * defect
    return block, pixel


def frame_image(rng: np.random.Generator, height: int = 320, width: int = 320, channels: int = 1) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def decided(
    dec: Decider, rng: np.random.Generator, seq: int, config: Config, *, defective: bool | None = None
) -> tuple[Verdict, tuple, np.ndarray, np.ndarray, np.ndarray | None]:
    """One frame as the pipeline hands it over: (verdict, decision, frame, block scores, pixel scores or None)."""
    if defective is None:
        defective = bool(rng.random() < 0.5)
    block, pixel = score_maps(rng, defective)
    mode = config.models.segmenter_mode
    segment = mode == "always" or (mode == "gated" and dec.flagged(block))
    pix = pixel if segment else None
    result, reason, defects, score = dec.decide(block, pix)
    now = time.time_ns()
    v = Verdict(
        seq=seq,
        camera_frame_id=seq,
        result=result,
        reason=reason,
        t_acquired_ns=now,
        t_decided_ns=now + 1000,
        defects=defects,
        recognizer_score=score,
        segmenter_ran=pix is not None,
        config_hash=config.config_hash(),
        model_hashes={"recognizer": "r", "segmenter": "s"},
    )
    assert reason in (Reason.OK, Reason.DEFECT)
    return v, (result, reason, defects, score), frame_image(rng), block, pix


class Events:
    """An EventSink that remembers what it was told."""

    def __init__(self):
        self.seen: list[tuple[str, dict]] = []

    def event(self, kind: str, **fields) -> None:
        self.seen.append((kind, fields))

    def states(self) -> list[str]:
        return [f.get("state", "") for k, f in self.seen if k == "archive"]


def hand_over(sink, item) -> bool:
    """What the pipeline does for one frame (batch row 0): stage its pixels, then offer it after the decision."""
    verdict, decision, frame, block, pixels = item
    sink.stage(0, frame)
    return sink.offer(0, verdict, decision, block, pixels)
