"""`inspector-train export`: checkpoint -> ONNX model + manifest, checked against PyTorch on real images.

    inspector-train export --checkpoint runs/rec/best.pt --out engines/line1/recognizer.onnx \\
        --evaluation runs/rec/eval.json --dataset "magnetic-tile (../shared/datasets/magnetic-tile)"

The graph is `models.Deployed` around the trained network, so it follows `inspector.manifest`'s conventions:
one input "image", uint8 NHWC (N, H, W, C) with a dynamic batch and static H, W, C; normalisation inside the
graph; output "block_scores" (N, H/32, W/32) = P(defective block) for a recognizer, "pixel_scores" (N, C, H, W)
softmax probabilities (class 0 background) for a segmenter. Baselines export too: the ResNet classifier as a
recognizer with a single block covering the whole (square) input, DeepLabv3+ as a segmenter.

TensorRT. Opset 17 through the TorchScript exporter (`dynamo=False`): it emits opset 17 directly, while the
dynamo exporter builds opset 18 and could not convert DeepLabv3+'s pooling back to 17 (torch 2.14). Bilinear
upsampling exports as `Resize` with `sizes` computed at run time from `Shape` (the batch is dynamic);
`static_resize` rewrites every such node to constant `scales` (exact: input sizes are multiples of 32, so every
ratio is an integer) and drops the shape arithmetic, so the parser sees no run-time shape computation. Every
export then passes `inspector.build.onnx_check` (TensorRT 10's operator table, uint8 only as the input).

Parity. ONNX Runtime (CPU, fp32) and PyTorch (CPU, fp32) run the same uint8 inputs — real images (Magnetic
Tile when ../shared holds it, else synthetic parts from `inspector.synth`) through the shared preprocessing,
as a batch and one at a time — and every output probability must agree within `PARITY_ATOL` (1e-4 absolute);
the export fails otherwise. Measured differences are ~1e-6 (float summation order).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

import inspector
from inspector.manifest import (
    BatchSpec,
    InputSpec,
    ModelManifest,
    OutputSpec,
    Preprocessing,
    TrainingInfo,
    sha256_file,
    write_manifest,
)

OPSET = 17
PARITY_ATOL = 1e-4  # max |ONNX Runtime - PyTorch| on any output probability, fp32 on the CPU
PARITY_IMAGES = 8
MAGNETIC_TILE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "magnetic-tile"


def architecture_name(task: str, arch: str) -> str:
    return {
        "recognizer": f"{arch}-fcn",
        "classifier": f"{arch}-classifier",
        "segmenter": f"deeplabv3plus-branch-{arch}",
        "deeplabv3plus": f"deeplabv3plus-aspp-{arch}",
    }[task]


# ------------------------------------------------------------------------------------------ graph edits


def _static_shape(value_info: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def static_resize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace run-time `sizes` of Resize nodes by constant `scales`; -> (model, nodes rewritten).

    Needs static channel/height/width on both sides of each Resize (shape inference provides them); refuses
    a ratio that is not exact rather than exporting a graph that resizes differently from PyTorch.
    """
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes = {vi.name: _static_shape(vi) for vi in (*inferred.graph.value_info, *inferred.graph.input)}
    shapes.update({vi.name: _static_shape(vi) for vi in inferred.graph.output})
    constants = {init.name for init in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3] or node.input[3] in constants:
            continue
        src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not src or not dst or len(src) != 4 or any(d is None for d in (*src[1:], *dst[1:])):
            raise ValueError(f"Resize {node.name}: shapes {src} -> {dst} are not static; cannot fix its scales")
        scales = np.array([1.0, 1.0, dst[2] / src[2], dst[3] / src[3]], np.float32)
        if dst[2] != int(src[2] * scales[2]) or dst[3] != int(src[3] * scales[3]):
            raise ValueError(f"Resize {node.name}: {src} -> {dst} is not an exact scale")
        name = f"{node.name or node.output[0]}_static_scales"
        model.graph.initializer.append(numpy_helper.from_array(scales, name))
        data = node.input[0]
        del node.input[:]
        node.input.extend([data, "", name])  # X, roi (unused by linear/half_pixel), scales
        rewritten += 1
    return prune(model), rewritten


def prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes and initializers that no graph output depends on (the dead shape arithmetic)."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inits = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


# ---------------------------------------------------------------------------------------------- export


def to_onnx(deployed: Any, size: tuple[int, int], channels: int, output: str, path: Path) -> dict[str, Any]:
    """Trace `deployed` to ONNX at `path` (opset 17, dynamic batch, static H/W/C, static Resize scales)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        example = torch.zeros((2, size[0], size[1], channels), dtype=torch.uint8)
        torch.onnx.export(
            deployed,
            (example,),
            str(raw),
            input_names=["image"],
            output_names=[output],
            dynamic_axes={"image": {0: "N"}, output: {0: "N"}},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
        model = onnx.load(str(raw))
    model, rewritten = static_resize(model)
    del model.graph.value_info[:]  # stale after pruning; shape inference recomputes what tools need
    model.producer_name = "inspector-train export"
    model.producer_version = inspector.__version__ if hasattr(inspector, "__version__") else "0.1.0"
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return {"resize_rewritten": rewritten, "nodes": len(model.graph.node)}


def parity_images(
    size: tuple[int, int],
    color: str,
    data: Path | None,
    n: int = PARITY_IMAGES,
    scale: float | None = None,
    pad: str = "zero",
) -> tuple[np.ndarray, str]:
    """n real images through the shared preprocessing (squashed, or placed at `scale`) -> (n, h, w, c) uint8,
    and where they came from."""
    from inspector.preprocess import place_image, resize_image
    from inspector.train.datasets import image_pixel_format, load_dataset, read_image

    source = data if data is not None else (MAGNETIC_TILE if MAGNETIC_TILE.is_dir() else None)
    if source is not None:
        samples, _ = load_dataset(source)
        # Defective and defect-free ones, spread over the data set (a fixed, seeded choice).
        pick = np.random.default_rng(0).choice(len(samples), min(n, len(samples)), replace=False)
        images = [read_image(samples[i].image) for i in sorted(pick)]
        where = f"{source} ({len(images)} images)"
    else:
        from inspector.synth import render_part

        rng = np.random.default_rng(0)
        images = [render_part(rng, 320, 320, defective=i % 2 == 0, channels=1)[0] for i in range(n)]
        where = f"synthetic parts (inspector.synth, seed 0, {n} images)"
    if scale is None:
        batch = np.stack([resize_image(im, size, pixel_format=image_pixel_format(im), color=color) for im in images])  # type: ignore[arg-type]
    else:
        batch = np.stack(
            [
                place_image(im, scale, size, pixel_format=image_pixel_format(im), color=color, pad=pad)[0]
                for im in images
            ]  # type: ignore[arg-type]
        )
    return batch, where


def check_parity(deployed: Any, onnx_path: Path, batch: np.ndarray, atol: float = PARITY_ATOL) -> dict[str, float]:
    """PyTorch vs ONNX Runtime on the same uint8 batch, batched and image by image; raises beyond `atol`."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_outputs()[0].name
    with torch.inference_mode():
        ref = deployed(torch.from_numpy(batch)).numpy()
    got = session.run([name], {"image": batch})[0]
    single = np.concatenate([session.run([name], {"image": batch[i : i + 1]})[0] for i in range(len(batch))])
    if got.shape != ref.shape:
        raise AssertionError(f"ONNX output {got.shape} vs PyTorch {ref.shape}")
    diff = float(np.abs(got - ref).max())
    diff_single = float(np.abs(single - ref).max())
    result = {"max_abs_diff": diff, "max_abs_diff_batch1": diff_single, "atol": atol, "images": len(batch)}
    if not (diff <= atol and diff_single <= atol):
        raise AssertionError(f"ONNX Runtime and PyTorch differ by {max(diff, diff_single):.3g} > {atol}: {result}")
    return result


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def flat_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """An evaluate report -> {"image_all_acc": ..., "pixel_all_f1": ...}: numbers only (undefined ones left out)."""
    out = {}
    for level in ("image", "pixel"):
        for subset, values in evaluation.get(level, {}).items():
            for key in ("tpr", "tnr", "acc", "ap", "auroc", "precision", "recall", "f1", "iou"):
                v = values.get(key)
                if isinstance(v, int | float) and v == v:  # skip None / NaN
                    out[f"{level}_{subset}_{key}"] = float(v)
    return out


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    evaluation: dict[str, Any] | None = None,
    dataset: str = "unknown",
    batch_max: int = 16,
    parity_data: Path | None = None,
    threads: int = 2,
    input_size: tuple[int, int] | None = None,
) -> tuple[ModelManifest, dict[str, Any]]:
    """Write OUT (.onnx) and OUT.manifest.json from a checkpoint; -> (manifest, parity/graph report).

    `input_size` exports a fully convolutional model (recognizer, segmenters) at another input than it was
    validated on, e.g. the line camera's frame at the model's scale: the weights do not depend on it."""
    import torch

    from inspector.build.onnx_check import check_model_for_manifest
    from inspector.train.recipe import deployed_from_checkpoint

    torch.set_num_threads(threads)
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"{out}: the exported model file must end in .onnx")
    deployed, ckpt = deployed_from_checkpoint(checkpoint)
    task, arch = ckpt["task"], ckpt["arch"]
    height, width = (int(v) for v in ckpt["size"])
    scale = ckpt.get("scale")
    if input_size is not None:
        if task == "classifier":
            raise ValueError("the classifier baseline has a fixed input (global pooling over its training size)")
        height, width = input_size
    channels = int(ckpt["in_channels"])
    if task in ("recognizer", "classifier"):
        if task == "classifier" and height != width:
            raise ValueError("a classifier exports as a one-block recognizer, which needs a square input")
        block = 32 if task == "recognizer" else height
        gh, gw = height // block, width // block
        output = OutputSpec(
            name="block_scores",
            shape=["N", gh, gw],
            meaning=f"P(defective) of each {block}x{block}-pixel block of the network input, softmax folded in",
        )
        manifest_task, classes, block_size = "recognizer", ["normal", "defect"], block
    else:
        classes = ["background", *ckpt["classes"]]
        output = OutputSpec(
            name="pixel_scores",
            shape=["N", len(classes), height, width],
            meaning="per-pixel class probabilities (softmax over classes; channel = index in classes, 0 background)",
        )
        manifest_task, block_size = "segmenter", None

    started = time.monotonic()
    graph = to_onnx(deployed, (height, width), channels, output.name, out)
    pad = ckpt.get("pad", "zero")
    batch, where = parity_images((height, width), ckpt["color"], parity_data, scale=scale, pad=pad)
    parity = check_parity(deployed, out, batch)
    parity["source"] = where

    thresholds = {k: float(v) for k, v in (evaluation or {}).get("thresholds", {}).items()}
    metrics = flat_metrics(evaluation) if evaluation else {k: float(v) for k, v in ckpt.get("metrics", {}).items()}
    manifest = ModelManifest(
        task=manifest_task,
        format="onnx",
        file=out.name,
        sha256=sha256_file(out),
        architecture=architecture_name(task, arch),
        input=InputSpec(height=height, width=width, channels=channels),  # type: ignore[arg-type]
        outputs=[output],
        preprocessing=Preprocessing(
            resize="area",
            fit="squash" if scale is None else "place",
            scale=scale,
            pad=pad,
            color=ckpt["color"],
            mean=list(ckpt["mean"]),
            std=list(ckpt["std"]),
        ),
        batch=BatchSpec(min=1, opt=min(4, batch_max), max=batch_max, dynamic=True),
        block_size=block_size,
        classes=classes,
        opset=OPSET,
        training=TrainingInfo(
            dataset=dataset,
            seed=ckpt.get("seed"),
            epochs=int(ckpt["epoch"]) + 1 if ckpt.get("epoch") is not None else None,
            commit=ckpt.get("commit") or git_commit(),
            hardware=ckpt.get("hardware"),
            train_seconds=ckpt.get("train_seconds"),
            metrics=metrics,
            suggested_thresholds=thresholds,
        ),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        producer=f"inspector-train export (torch {torch.__version__}, onnx {onnx.__version__}, "
        f"python {platform.python_version()})",
    )
    write_manifest(out, manifest)
    trt = check_model_for_manifest(out, manifest)
    trt.raise_for_errors()
    info = {**graph, "parity": parity, "tensorrt_check": "ok", "seconds": time.monotonic() - started}
    return manifest, info


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from inspector.train.cli import parse_size

    p = subparsers.add_parser(
        "export",
        help="checkpoint -> ONNX + manifest, with an ONNX Runtime vs PyTorch parity check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="model file to write (.onnx); the manifest goes beside it")
    p.add_argument(
        "--evaluation",
        type=Path,
        help="report of `inspector-train evaluate --out`: its test metrics and "
        "validation-chosen thresholds go into the manifest",
    )
    p.add_argument("--dataset", default="unknown", help="training data set, in words, for the manifest")
    p.add_argument("--batch-max", type=int, default=16, help="largest batch the daemon may send")
    p.add_argument(
        "--parity-data", type=Path, help="images for the parity check (default: Magnetic Tile, else synthetic)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--input-size",
        type=parse_size,
        help="HxW network input to export at (recognizer/segmenter; default: the size it was validated at), e.g. "
        "your camera's frame size times the model's scale, rounded up to multiples of 32",
    )
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    evaluation = json.loads(args.evaluation.read_text()) if args.evaluation else None
    manifest, info = export_checkpoint(
        args.checkpoint,
        args.out,
        evaluation=evaluation,
        dataset=args.dataset,
        batch_max=args.batch_max,
        parity_data=args.parity_data,
        threads=args.threads,
        input_size=args.input_size,
    )
    parity = info["parity"]
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {manifest.task}, {manifest.architecture}, "
        f"input {manifest.input.height}x{manifest.input.width}x{manifest.input.channels}, opset {OPSET}, "
        f"{info['resize_rewritten']} Resize node(s) given static scales; TensorRT operator check ok)"
    )
    print(
        f"parity ONNX Runtime vs PyTorch on {parity['source']}: max |diff| {parity['max_abs_diff']:.2e} "
        f"(batch of {parity['images']}), {parity['max_abs_diff_batch1']:.2e} (batch 1); tolerance {parity['atol']:g}"
    )
    return 0
