#!/usr/bin/env python3
"""The fault-injecting side of the soak harness (tools/soak.py): a plan, a source and a backend wrapper.

Nothing here ships in the package. `python tools/soak_faults.py --config LINE.yaml` is `inspector run --config
LINE.yaml --no-console` with two registry entries replaced in this process only: source kind `synthetic` becomes
`SoakSource` and backend `onnxruntime` becomes `FaultBackend` around the real ONNX Runtime backend. The daemon
itself (threads, ring, decision, publisher, metrics, signals, reload) is the product's, unchanged.

The plan is a pure function of (seed, frames, fault rate, kinds): the harness computes the same arrays to check
every verdict it receives against what was injected into that frame. Frame i of the source is seq i of the run
(the pipeline gives every grabbed frame the next seq), so a verdict's seq names its plan entry.

How each fault reaches the daemon:
- bad_frame: the source flags the grab (`Grab.bad_frame`), as a camera source does for a wrong payload;
- gap: the camera frame id jumps (`camera_drops_before`), as a camera that lost frames;
- silence: the source delivers nothing for a while before the frame (a camera that went quiet);
- nan / range / hang: the frame carries a marker in its top-left 4x4 block (pixel values no real content of this
  line has); the recognizer's outputs for that row are overwritten with NaN or an out-of-range value after the
  real inference, or the whole batch's inference sleeps past the deadline (a hung engine);
- raise: the marker is the tiny recognizer's built-in poison value (tests/tiny_models.py): ONNX Runtime itself
  fails on the batch (a genuine engine exception, no Python raise).
Frames with `defect` show a bright spot the tiny models detect: they must never pass either.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Fault kinds. Those after NONE in IMPOSSIBLE make inspection of their frame impossible: never a pass.
NONE, NAN, RANGE, RAISE, HANG, BAD_FRAME, GAP, SILENCE = range(8)
KIND_NAMES = ("none", "nan", "range", "raise", "hang", "bad_frame", "gap", "silence")
IMPOSSIBLE = ("nan", "range", "raise", "hang", "bad_frame")
# Relative weights of the fault kinds among faulted frames: a hang costs hang_s of wall time, so it is rarer.
DEFAULT_WEIGHTS = {"nan": 2.0, "range": 2.0, "raise": 2.0, "hang": 0.25, "bad_frame": 2.0, "gap": 2.0, "silence": 0.5}

# Top-left block values; the line's own content is BACKGROUND there, so a marker cannot occur by accident.
BACKGROUND, SPOT = 60, 250
MARK_NAN, MARK_RANGE_HI, MARK_RANGE_LO, MARK_HANG, POISON = 21, 22, 23, 24, 25
MARK_OF = {NAN: MARK_NAN, RANGE: MARK_RANGE_HI, HANG: MARK_HANG, RAISE: POISON}
FRAME = 64  # frame and model input size: the resize is an identity, so the markers reach the input row intact

PLAN_ENV = "INSPECTOR_SOAK_PLAN"


@dataclass
class PlanSpec:
    seed: int
    frames: int
    fault_rate: float
    defect_rate: float
    weights: dict[str, float]
    hang_s: float
    silence_s: float
    # The harness's gate: the source delivers frames only while their index is below the number in this file
    # (none before it exists: the consumers connect first). The harness moves it on as it starts each event, so
    # events happen at exact frame counts however slow the box, and frames flow while an event runs.
    gate_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> PlanSpec:
        return cls(**json.loads(text))


@dataclass
class Plan:
    """Per source frame i: its fault kind, whether it shows a defect, its camera frame id and drops before it."""

    spec: PlanSpec
    kind: np.ndarray  # int8
    defect: np.ndarray  # bool
    gap: np.ndarray  # int32: camera frames lost just before frame i
    frame_id: np.ndarray  # int64

    @classmethod
    def build(cls, spec: PlanSpec) -> Plan:
        rng = np.random.default_rng(spec.seed)
        n = spec.frames
        names = [k for k in KIND_NAMES[1:] if spec.weights.get(k, 0) > 0]
        kind = np.zeros(n, np.int8)
        if names:
            p = np.array([spec.weights[k] for k in names], float)
            faulted = rng.random(n) < spec.fault_rate
            faulted[: min(n, 64)] = False  # the first frames are clean: the consumers see the run start normally
            chosen = rng.choice([KIND_NAMES.index(k) for k in names], size=int(faulted.sum()), p=p / p.sum())
            kind[faulted] = chosen
        defect = rng.random(n) < spec.defect_rate
        gap = np.where(kind == GAP, rng.integers(1, 50, n), 0).astype(np.int32)
        frame_id = np.arange(n, dtype=np.int64) + np.cumsum(gap, dtype=np.int64)
        return cls(spec, kind, defect, gap, frame_id)

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.kind, minlength=len(KIND_NAMES))
        return {name: int(found[i]) for i, name in enumerate(KIND_NAMES)}


def _spec_from_env() -> PlanSpec:
    path = os.environ.get(PLAN_ENV)
    if not path:
        raise RuntimeError(f"{PLAN_ENV} is not set: run this through tools/soak.py")
    return PlanSpec.from_json(Path(path).read_text())


# ------------------------------------------------------------------------------------------------ source


def _read_gate(path: str | None) -> int:
    if path is None:
        return 0
    try:
        return int(Path(path).read_text() or 0)
    except (OSError, ValueError):  # not there yet, or caught mid-write
        return 0


class SoakSource:
    """A synthetic line of `spec.frames` 64x64 mono8 parts with the plan's faults; idle (no frames) after them."""

    def __init__(self, cfg: Any, events: Any):
        from inspector.sources.pacing import Pacer

        self.cfg = cfg
        self.events = events
        self.plan: Plan | None = None
        self._pacer = Pacer(cfg.rate_hz)
        self._i = 0
        self._silent_until = 0.0
        self._limit = 0  # frames the gate lets through so far
        self._clean = np.full((FRAME, FRAME, 1), BACKGROUND, np.uint8)
        self._spot = self._clean.copy()
        self._spot[28:36, 28:36] = SPOT

    def open(self) -> None:
        from inspector.sources import SourceError

        if (self.cfg.width, self.cfg.height, self.cfg.pixel_format) != (FRAME, FRAME, "mono8"):
            raise SourceError(f"soak source: the line must be {FRAME}x{FRAME} mono8")
        self.plan = Plan.build(_spec_from_env())
        if self.plan.spec.gate_file is None:
            self._limit = self.plan.spec.frames

    def start(self) -> None:
        self._pacer.start(0)
        self.events.camera_state(True, "soak line")

    def grab(self, out: np.ndarray, timeout_s: float) -> Any:
        from inspector.sources import Grab

        plan = self.plan
        assert plan is not None
        i = self._i
        if i >= self._limit:  # the file is read only here, not per frame
            self._limit = _read_gate(plan.spec.gate_file)
            if i >= self._limit:
                time.sleep(min(timeout_s, 0.01))
                return None
        if i >= plan.spec.frames:
            time.sleep(timeout_s)  # the run is over: an idle line, until the harness stops the daemon
            return None
        kind = int(plan.kind[i])
        if kind == SILENCE:
            now = time.monotonic()
            if self._silent_until == 0.0:
                self._silent_until = now + plan.spec.silence_s
            if now < self._silent_until:
                time.sleep(min(timeout_s, self._silent_until - now))
                return None
            self._silent_until = 0.0
        # At a free-running rate the box cannot keep, a late frame is delivered late, never skipped: the camera
        # frame ids stay the plan's, so the harness can check them exactly (the pacer's own drops are ignored).
        if self._pacer.wait(timeout_s) is None:
            return None
        np.copyto(out, self._spot if plan.defect[i] else self._clean)
        mark = MARK_OF.get(kind)
        if mark is not None:
            if kind == RANGE and i % 2:
                mark = MARK_RANGE_LO
            out[:4, :4] = mark
        self._i = i + 1
        return Grab(
            camera_frame_id=int(plan.frame_id[i]),
            height=FRAME,
            width=FRAME,
            bad_frame="soak: injected bad frame (payload unusable)" if kind == BAD_FRAME else None,
            camera_drops_before=int(plan.gap[i]),
        )

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.plan = None


# ----------------------------------------------------------------------------------------------- backend


class FaultBackend:
    """The real ONNX Runtime backend; on the recognizer, rows whose input carries a marker get poisoned outputs
    (NaN, out of range) or the batch hangs past the deadline. Everything else passes through untouched."""

    def __init__(self, model_path: Path, manifest: Any, settings: Any, max_batch: int):
        from inspector.backends.onnxruntime import OnnxRuntimeBackend

        self.inner = OnnxRuntimeBackend(model_path, manifest, settings, max_batch)
        self.manifest = manifest
        self.max_batch = max_batch
        self._recognizer = manifest.task == "recognizer"
        self._hang_s = _spec_from_env().hang_s if self._recognizer else 0.0

    @classmethod
    def unavailable(cls, settings: Any) -> str | None:
        from inspector.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.unavailable(settings)

    def input_buffer(self) -> np.ndarray:
        return self.inner.input_buffer()

    def run(self, n: int) -> dict[str, np.ndarray]:
        outputs = self.inner.run(n)
        if not self._recognizer:
            return outputs
        marks = self.inner.input_buffer()[:n, 0, 0, 0]
        if int(marks.min()) > MARK_HANG:  # the usual case: one small reduction per batch
            return outputs
        scores = outputs["block_scores"]
        for row in range(n):
            mark = int(marks[row])
            if mark == MARK_NAN:
                scores[row] = np.nan
            elif mark == MARK_RANGE_HI:
                scores[row] = 7.5
            elif mark == MARK_RANGE_LO:
                scores[row] = -3.0
            elif mark == MARK_HANG:
                time.sleep(self._hang_s)
        return outputs

    def close(self) -> None:
        self.inner.close()


def install() -> None:
    """Replace the synthetic source and the ONNX Runtime backend in this process's registries."""
    import inspector.backends as backends
    import inspector.sources as sources

    backends.BACKENDS["onnxruntime"] = FaultBackend  # type: ignore[assignment]
    sources.SOURCES["synthetic"] = lambda: SoakSource  # type: ignore[assignment,return-value]


def main() -> int:
    p = argparse.ArgumentParser(description="inspector run with the soak harness's faults (tools/soak.py)")
    p.add_argument("--config", required=True)
    args = p.parse_args()
    install()
    from inspector.cli import main as inspector_main

    return inspector_main(["run", "--config", args.config, "--no-console"])


if __name__ == "__main__":
    sys.exit(main())
