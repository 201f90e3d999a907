"""`inspector-build-engine`: exported ONNX model (with its manifest) -> TensorRT engine + engine manifest.

    inspector-build-engine engines/recognizer.onnx --precision fp16 --batch 8
    inspector-build-engine engines/segmenter.onnx --precision int8 --batch 4 --calibration data/calib/

Needs the `build` extra (onnx) and the `gpu` extra (TensorRT, cuda-python) on the GPU the engine is for; without
them it says so in one line. Exit status: 0 built, 1 refused or failed, 2 bad arguments, 130 cancelled.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_TIMING_CACHE = "~/.cache/inspector/tensorrt.timing-cache"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inspector-build-engine",
        description="Build a TensorRT engine (FP32/FP16/INT8) from an exported ONNX model and its manifest.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("onnx", type=Path, help="exported ONNX model (its manifest lies beside it)")
    parser.add_argument(
        "--output", "-o", type=Path, help="engine file (default: MODEL.PRECISION.bBATCH.engine beside the model)"
    )
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16", help="engine precision")
    parser.add_argument("--batch", type=int, default=4, help="largest batch: the line config's pipeline.batch_size")
    parser.add_argument("--calibration", type=Path, help="INT8: folder of calibration images (training data)")
    parser.add_argument("--calibration-count", type=int, default=256, help="INT8: images used (evenly spread)")
    parser.add_argument(
        "--calibration-method",
        choices=["percentile", "max"],
        default="percentile",
        help="INT8: activation range from the 99.99th percentile of |x|, or its maximum",
    )
    parser.add_argument(
        "--timing-cache",
        type=Path,
        default=Path(os.environ.get("INSPECTOR_TIMING_CACHE", DEFAULT_TIMING_CACHE)),
        help="tactic timing cache kept between builds ($INSPECTOR_TIMING_CACHE overrides the default)",
    )
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit (GiB)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device ordinal")
    parser.add_argument("--strongly-typed", action="store_true", help="let the graph's types decide precision")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's INFO log")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from inspector.backends import BackendError
    from inspector.backends.tensorrt import default_engine_path

    try:
        from inspector.build import BuildError
        from inspector.build.onnx_check import OnnxCompatibilityError
        from inspector.build.tensorrt import BuildProgress, build_engine
    except ImportError as exc:  # the build extra (onnx) is not installed
        print(f"inspector-build-engine needs the build extra (pip install 'inspector[build]'): {exc}", file=sys.stderr)
        return 1
    engine = args.output or default_engine_path(args.onnx, args.precision, args.batch)
    progress = BuildProgress()
    try:
        build_engine(
            args.onnx,
            engine,
            precision=args.precision,
            batch=args.batch,
            calibration=args.calibration,
            calibration_count=args.calibration_count,
            calibration_method=args.calibration_method,
            timing_cache=args.timing_cache.expanduser(),
            workspace_gib=args.workspace_gib,
            device=args.device,
            strongly_typed=args.strongly_typed,
            verbose=args.verbose,
            progress=progress,
        )
    except KeyboardInterrupt:
        progress.cancelled = True
        print("\ninspector-build-engine: cancelled", file=sys.stderr)
        return 130
    except (BuildError, BackendError, OnnxCompatibilityError) as exc:
        print(f"inspector-build-engine: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
