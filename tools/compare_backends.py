#!/usr/bin/env python3
"""Agreement report: a GPU backend (TensorRT engine or the CUDA backend) vs ONNX Runtime on the CPU.

For the same held-out frames it compares recognizer block scores, segmenter pixel scores and masks, and the
verdicts `inspector.decision.Decider` gives from each, against the tolerances for the engine's precision
(docs/GPU.md). Writes a JSON and a Markdown report; exit status 1 if anything is outside tolerance.

    tools/compare_backends.py --backend tensorrt --recognizer engines/rec.onnx --recognizer-model rec.fp16.b8.engine \
        --segmenter engines/seg.onnx --segmenter-model seg.fp16.b8.engine --images data/heldout --out docs/gpu-results
    tools/compare_backends.py --backend cuda --recognizer engines/demo/recognizer.onnx --synthetic 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from inspector.backends import backend_class
from inspector.config import DecisionConfig, TensorRTSettings
from inspector.manifest import ModelManifest, read_manifest

# Per precision: block/pixel score |diff| mean and max, pixel-mask (argmax) agreement, verdict agreement.
# FP16 has a 10-bit mantissa (~1e-3 relative) over ~50 layers; INT8 adds per-layer quantization noise of
# ~1/254 of each range. "cuda" is ONNX Runtime's CUDA provider with TF32 convolutions (10-bit mantissa, like FP16).
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"score_mean": 1e-4, "score_max": 2e-3, "mask_agreement": 0.9999, "verdict_agreement": 1.0},
    "fp16": {"score_mean": 2e-3, "score_max": 3e-2, "mask_agreement": 0.999, "verdict_agreement": 0.99},
    "cuda": {"score_mean": 2e-3, "score_max": 3e-2, "mask_agreement": 0.999, "verdict_agreement": 0.99},
    "int8": {"score_mean": 2e-2, "score_max": 0.2, "mask_agreement": 0.98, "verdict_agreement": 0.97},
}


def load_frames(manifest: ModelManifest, images: Path | None, count: int, seed: int = 0) -> np.ndarray:
    """Held-out frames as network inputs, through `inspector.preprocess` (the one preprocessing)."""
    from inspector.build.quantize import calibration_files, load_calibration_images

    if images is not None:
        return load_calibration_images(calibration_files(images, count), manifest)
    import cv2

    rng = np.random.default_rng(seed)
    h, w, c = manifest.input.height, manifest.input.width, manifest.input.channels
    out = np.zeros((count, h, w, c), np.uint8)
    for i in range(count):
        base = cv2.GaussianBlur(rng.normal(128, 25, (h, w, c)).clip(0, 255), (7, 7), 2.0).reshape(h, w, c)
        if i % 2:
            for _ in range(int(rng.integers(1, 4))):
                x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
                cv2.line(base, (x, y), (x + int(rng.integers(-60, 60)), y + int(rng.integers(-60, 60))),
                         (float(rng.integers(0, 80)),) * c, int(rng.integers(1, 5)))  # fmt: skip
        out[i] = base.astype(np.uint8)
    return out


def run_reference(onnx_path: Path, frames: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: frames[i : i + 1]})[0] for i in range(len(frames))])


def run_backend(kind: str, model: Path, manifest: ModelManifest, settings, frames: np.ndarray, batch: int, output: str):
    backend = backend_class(kind)(model, manifest, settings, batch)
    try:
        outs = []
        for start in range(0, len(frames), batch):
            n = min(batch, len(frames) - start)
            backend.input_buffer()[:n] = frames[start : start + n]
            outs.append(backend.run(n)[output].copy())
        return np.concatenate(outs), backend.manifest
    finally:
        backend.close()


def compare(args: argparse.Namespace) -> dict:
    settings = TensorRTSettings(precision=args.precision if args.backend == "tensorrt" else None)
    report: dict = {"backend": args.backend, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
    rec_manifest = read_manifest(args.recognizer)
    frames = load_frames(rec_manifest, args.images, args.count)
    report["frames"] = {"count": len(frames), "source": str(args.images) if args.images else "synthetic"}
    results = {}
    for task, onnx_path, model in [
        ("recognizer", args.recognizer, args.recognizer_model),
        ("segmenter", args.segmenter, args.segmenter_model),
    ]:
        if onnx_path is None:
            continue
        manifest = read_manifest(onnx_path)
        model = model or onnx_path
        model_manifest = read_manifest(model)
        output = "block_scores" if task == "recognizer" else "pixel_scores"
        ref = run_reference(onnx_path, frames)
        got, used = run_backend(args.backend, model, model_manifest, settings, frames, args.batch, output)
        precision = used.tensorrt.precision if used.tensorrt else "cuda"
        tol = TOLERANCES[precision]
        diff = np.abs(got.astype(np.float64) - ref)
        entry = {
            "model": str(model),
            "precision": precision,
            "tolerance": tol,
            "score_mean": float(diff.mean()),
            "score_max": float(diff.max()),
        }
        if task == "segmenter":
            entry["mask_agreement"] = float((got.argmax(1) == ref.argmax(1)).mean())
        ok = entry["score_mean"] <= tol["score_mean"] and entry["score_max"] <= tol["score_max"]
        ok &= entry.get("mask_agreement", 1.0) >= tol["mask_agreement"]
        entry["ok"] = bool(ok)
        report["models"][task] = entry
        results[task] = (ref, got, manifest)

    from inspector.decision import Decider

    rec_ref, rec_got, rec_m = results["recognizer"]
    seg = results.get("segmenter")
    size = (rec_m.input.height, rec_m.input.width)
    decider = Decider(DecisionConfig(), size, rec_m, seg[2] if seg else None, None)
    same = 0
    for i in range(len(frames)):
        a = decider.decide(rec_ref[i], seg[0][i] if seg else None)[0]
        b = decider.decide(rec_got[i], seg[1][i] if seg else None)[0]
        same += a == b
    agreement = same / len(frames)
    worst = min(TOLERANCES[m["precision"]]["verdict_agreement"] for m in report["models"].values())
    report["verdicts"] = {"agreement": agreement, "required": worst, "ok": agreement >= worst}
    report["ok"] = all(m["ok"] for m in report["models"].values()) and report["verdicts"]["ok"]
    return report


def markdown(report: dict) -> str:
    lines = [f"### {report['backend']} vs ONNX Runtime (CPU), {report['created']}", ""]
    lines.append(f"{report['frames']['count']} frames ({report['frames']['source']}).")
    lines += [
        "",
        "| model | precision | score mean / max abs diff (tol) | mask agreement (tol) | ok |",
        "|---|---|---|---|---|",
    ]
    for task, m in report["models"].items():
        t = m["tolerance"]
        mask = f"{m['mask_agreement']:.5f} (≥{t['mask_agreement']})" if "mask_agreement" in m else "—"
        lines.append(
            f"| {task} | {m['precision']} | {m['score_mean']:.2e} / {m['score_max']:.2e} "
            f"({t['score_mean']:.0e} / {t['score_max']:.0e}) | {mask} | {'yes' if m['ok'] else 'NO'} |"
        )
    v = report["verdicts"]
    lines += [
        "",
        f"Verdict agreement: {v['agreement']:.4f} (required ≥ {v['required']}): {'ok' if v['ok'] else 'FAIL'}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["tensorrt", "cuda"], required=True)
    p.add_argument("--recognizer", type=Path, required=True, help="recognizer ONNX (the reference)")
    p.add_argument("--recognizer-model", type=Path, help="what the backend runs (engine); default the ONNX")
    p.add_argument("--segmenter", type=Path, help="segmenter ONNX (the reference)")
    p.add_argument("--segmenter-model", type=Path, help="what the backend runs (engine); default the ONNX")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="tensorrt: the precision engines must have")
    p.add_argument("--images", type=Path, help="held-out images folder; default: synthetic frames")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", type=Path, help="folder for compare-<backend>.json/.md")
    args = p.parse_args(argv)
    report = compare(args)
    text = markdown(report)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"compare-{args.backend}" + (f"-{args.precision}" if args.precision else "")
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
