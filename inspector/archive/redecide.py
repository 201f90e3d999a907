"""Re-deciding archived frames from their stored network outputs, with the daemon's own decision code.

Nothing about thresholds is re-implemented here: a record's block and pixel scores go through
`inspector.decision.Decider` (built from the archive's copy of the models' manifests), and the segmenter gating
is the pipeline's rule: `never` decides on blocks; `always` on pixels; `gated` on pixels only when
`Decider.flagged` says the recognizer fired, else on blocks (which then pass).

A frame the new thresholds would send to the segmenter, archived without segmenter output (gated, not flagged
then), cannot be re-decided: its outcome is `unknown`, and reports count it apart instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspector.archive.layout import Record
from inspector.archive.reader import ArchiveReader
from inspector.config import DecisionConfig
from inspector.decision import Decider, load_ignore_mask
from inspector.frames import Defect


@dataclass(frozen=True)
class Outcome:
    result: str | None  # pass / reject; None = unknown (needs segmenter output the record does not have)
    reason: str | None  # ok / defect
    defects: tuple[Defect, ...]
    score: float  # highest block score outside the ignore regions
    flagged: bool  # some block at or above block_threshold
    segmented: bool  # decided on the segmenter's pixels
    below_min_area: int  # blobs too small to reject

    @property
    def known(self) -> bool:
        return self.result is not None

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({d.cls for d in self.defects}))


def stored_decision(record: Record) -> tuple[str, str, tuple[Defect, ...], float]:
    """What the daemon's Decider returned for this frame (unrounded), as (result, reason, defects, score)."""
    d = record.meta["decision"]
    defects = tuple(Defect(x["class"], int(x["area_px"]), tuple(x["bbox"]), float(x["score"])) for x in d["defects"])
    return d["result"], d["reason"], defects, float(d["recognizer_score"])


def outcome_matches(outcome: Outcome, record: Record) -> bool:
    """Exactly the stored decision: result, reason, every defect (class, area, box, score) and the block score."""
    result, reason, defects, score = stored_decision(record)
    return (outcome.result, outcome.reason, outcome.defects, outcome.score) == (result, reason, defects, score)


class Redecider:
    """Deciders for archived records, cached per (frame size, models, thresholds, mode, ignore mask).

    decision None: each record is re-decided with the thresholds, segmenter mode and ignore mask it was decided
    with (review, import). Otherwise with the given ones (tune): `ignore_mask_file` is the config's
    decision.ignore_regions.mask, resolved.
    """

    def __init__(
        self,
        reader: ArchiveReader,
        decision: DecisionConfig | None = None,
        mode: str | None = None,
        ignore_mask_file: Path | None = None,
    ):
        self.reader = reader
        self.decision = decision
        self.mode = mode
        self.ignore_mask_file = ignore_mask_file
        self._deciders: dict[tuple[object, ...], Decider] = {}
        self._masks: dict[tuple[int, int], np.ndarray | None] = {}

    def settings(self, record: Record) -> tuple[DecisionConfig, str]:
        if self.decision is None:
            return DecisionConfig.model_validate(record.meta["decision_config"]), record.meta["segmenter_mode"]
        return self.decision, self.mode or record.meta["segmenter_mode"]

    def decider(self, record: Record) -> Decider:
        cfg, mode = self.settings(record)
        frame = record.frame_size
        hashes = record.meta["model_hashes"]
        seg_sha = hashes.get("segmenter") if mode != "never" else None
        own = self.decision is None
        key = (
            frame,
            hashes["recognizer"],
            seg_sha,
            cfg.model_dump_json(),
            record.meta["config_hash"] if own else "",
        )
        decider = self._deciders.get(key)
        if decider is None:
            mask = self.reader.ignore_mask(record.meta["config_hash"]) if own else self._file_mask(frame)
            if mode != "never" and seg_sha is None:
                raise ValueError(f"segmenter_mode {mode!r}, but record {record.id} names no segmenter")
            decider = Decider(
                cfg,
                frame,
                self.reader.manifest(hashes["recognizer"]),
                self.reader.manifest(seg_sha) if seg_sha else None,
                mask,
            )
            self._deciders[key] = decider
        return decider

    def _file_mask(self, frame: tuple[int, int]) -> np.ndarray | None:
        if self.ignore_mask_file is None:
            return None
        if frame not in self._masks:
            self._masks[frame] = load_ignore_mask(self.ignore_mask_file, frame)
        return self._masks[frame]

    def __call__(self, record: Record) -> Outcome:
        cfg, mode = self.settings(record)
        decider = self.decider(record)
        pixels = record.pixel_scores()
        floor = record.meta.get("pixel_floor")
        if pixels is not None and floor is not None and cfg.pixel_threshold < floor:
            pixels = None  # below the record's pixel floor its stored pixels are not exact: unknown, not wrong
        return redecide(decider, mode, record.block_scores(), pixels)


def redecide(decider: Decider, mode: str, block_scores: np.ndarray, pixel_scores: np.ndarray | None) -> Outcome:
    """One frame through the daemon's decision, with the pipeline's segmenter gating."""
    flagged = decider.flagged(block_scores)
    needs_pixels = mode == "always" or (mode == "gated" and flagged)
    if needs_pixels and pixel_scores is None:
        return Outcome(None, None, (), decider.max_block_score(block_scores), flagged, False, 0)
    pix = pixel_scores if needs_pixels else None
    result, reason, defects, score = decider.decide(block_scores, pix)
    return Outcome(result, reason.value, tuple(defects), score, flagged, pix is not None, decider.last_below_min_area)


def explain(record: Record, outcome: Outcome, cfg: DecisionConfig, mode: str) -> list[str]:
    """Why the inspection decided what it did, in a line engineer's words (for the review page)."""
    v = record.meta["verdict"]
    lines: list[str] = []
    bt = cfg.block_threshold
    if v["reason"] == "timeout":
        lines.append(
            f"Decided after the {v.get('detail') or 'deadline'}: the verdict is the fail-safe {v['result']}; "
            f"the inspection itself said {outcome.result or '?'}."
        )
    if mode == "never":
        lines.append(f"Segmenter mode never: blobs are groups of blocks scoring at or above {bt:g}.")
    elif outcome.flagged:
        lines.append(
            f"Recognizer: highest block score {outcome.score:.3f} ≥ block threshold {bt:g}, so the frame was "
            f"flagged and the segmenter ran ({mode})."
        )
    elif mode == "always":
        lines.append(
            f"Recognizer: highest block score {outcome.score:.3f} < block threshold {bt:g}; the segmenter runs on "
            "every frame (always)."
        )
    else:
        lines.append(
            f"Recognizer: highest block score {outcome.score:.3f} < block threshold {bt:g}: not flagged, not "
            "segmented, so it passes."
        )
    if outcome.defects:
        parts = []
        for d in outcome.defects:
            need = cfg.min_area_px_per_class.get(d.cls, cfg.min_area_px)
            x, y, w, h = d.bbox
            parts.append(f"{d.cls} {d.area_px} px (min {need}) at x={x} y={y} {w}×{h}, peak {d.score:.3f}")
        what = f"pixels at or above pixel threshold {cfg.pixel_threshold:g}" if outcome.segmented else "blocks"
        lines.append(f"Rejected for {len(outcome.defects)} blob(s) of defect {what}: " + "; ".join(parts) + ".")
    elif outcome.segmented:
        lines.append(
            f"No blob of pixels at or above pixel threshold {cfg.pixel_threshold:g} reached its minimum area "
            f"(min_area_px {cfg.min_area_px}), so it passes."
        )
    if outcome.below_min_area:
        lines.append(f"{outcome.below_min_area} smaller blob(s) were below their minimum area and did not count.")
    if not outcome.known:
        lines.append("The segmenter output needed to re-decide this frame was not archived.")
    return lines
