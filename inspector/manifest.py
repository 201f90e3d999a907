"""Model manifest: the JSON file beside every model file (`MODEL.manifest.json`).

Written by the training toolchain's export and by the engine builder; read and checked by the daemon before a
model is used. One pydantic model, imported by both sides, so they cannot drift apart.

Tensor conventions (fixed by schema_version 1):
- input: uint8, NHWC, (batch, height, width, channels), the frame already resized to (height, width) by
  `inspector.preprocess` — normalisation happens inside the model graph.
- recognizer output `block_scores`: float32 (batch, grid_h, grid_w), P(block is defective), softmax folded in.
- segmenter output `pixel_scores`: float32 (batch, len(classes), height, width), per-pixel class
  probabilities (softmax folded in); class 0 is always "background".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KB; a larger file is not one (and is not read whole)
MAX_INPUT_SIDE = 16384  # as the frame sides in the line config


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Model):
    name: str = Field("image", description="Input tensor name.")
    height: int = Field(ge=16, le=MAX_INPUT_SIDE, description="Network input height (pixels); a multiple of 32.")
    width: int = Field(ge=16, le=MAX_INPUT_SIDE, description="Network input width (pixels); a multiple of 32.")
    channels: Literal[1, 3] = Field(description="1 = grayscale, 3 = RGB.")
    layout: Literal["NHWC"] = "NHWC"
    dtype: Literal["uint8"] = "uint8"

    @model_validator(mode="after")
    def _multiple_of_32(self) -> InputSpec:
        if self.height % 32 or self.width % 32:
            raise ValueError(f"input {self.height}x{self.width} is not a multiple of 32")
        return self


class OutputSpec(_Model):
    name: str
    shape: list[int | str] = Field(description="Dimensions; 'N' is the batch dimension.")
    dtype: Literal["float32", "float16"] = "float32"
    meaning: str = Field(description="What the values are, in words.")


class Preprocessing(_Model):
    """What happens before the graph (resize, channel conversion) and inside it (normalisation)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    resize: Literal["area", "linear"] = Field(
        "area", description="cv2 interpolation used to bring the frame to the input size (fit squash)."
    )
    fit: Literal["squash", "place"] = Field(
        "squash",
        description="How a frame becomes the input. squash: resized to the input size, whatever its aspect ratio "
        "(the paper's 224x224). place: resized by `scale` (aspect ratio kept; area down, linear up, untouched at "
        "1.0) and written to the input's top-left corner, zeros elsewhere; only blocks/pixels that hold frame "
        "pixels are scored (inspector.preprocess.place_image).",
    )
    pad: Literal["zero", "reflect"] = Field(
        "zero",
        description="fit place: what fills the input around the frame: zeros, or the frame mirrored at its edges "
        "(cv2.BORDER_REFLECT_101). Blocks and pixels there are never scored.",
    )
    scale: float | None = Field(
        None,
        gt=0,
        le=16,
        description="fit place: network pixels per frame pixel the model was trained at (1.0 = native resolution). "
        "A frame too large for the input at this scale is shrunk further to fit, which the daemon reports.",
    )
    color: Literal["gray", "rgb"] = Field(description="Channel order the network expects.")
    mean: list[float] = Field(description="Per-channel mean on 0..1 pixels, subtracted inside the graph.")
    std: list[float] = Field(description="Per-channel std on 0..1 pixels, divided inside the graph.")
    normalization_in_graph: Literal[True] = True

    @model_validator(mode="after")
    def _scale_for_place(self) -> Preprocessing:
        if (self.fit == "place") != (self.scale is not None):
            raise ValueError("fit place needs a scale, and only fit place has one")
        return self


class BatchSpec(_Model):
    min: int = Field(1, ge=1, le=4096)
    opt: int = Field(1, ge=1, le=4096)
    max: int = Field(1, ge=1, le=4096, description="Largest batch the model accepts (dynamic models: any up to this).")
    dynamic: bool = Field(True, description="Whether the batch dimension is dynamic in the model file.")


class TrainingInfo(_Model):
    dataset: str = Field(description="Dataset name and where it came from.")
    dataset_hash: str | None = None
    seed: int | None = None
    epochs: int | None = None
    commit: str | None = None
    hardware: str | None = None
    train_seconds: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    suggested_thresholds: dict[str, float] = Field(default_factory=dict)


class TensorRTInfo(_Model):
    version: str
    gpu: str
    compute_capability: str
    precision: Literal["fp32", "fp16", "int8"]
    profile: BatchSpec
    onnx_sha256: str
    calibration_sha256: str | None = None
    build_seconds: float | None = None
    onnx_file: str | None = Field(None, description="ONNX model the engine was built from, as given to the builder.")
    calibration_source: str | None = Field(None, description="INT8: the calibration image folder used.")


class ModelManifest(_Model):
    schema_version: Literal[1] = 1  # MANIFEST_SCHEMA_VERSION
    task: Literal["recognizer", "segmenter"]
    format: Literal["onnx", "tensorrt"]
    file: str = Field(description="Model file name, relative to the manifest.")
    sha256: str = Field(description="SHA-256 of the model file.")
    architecture: str = Field(description="e.g. resnet50-fcn, deeplabv3plus-branch-r50.")
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    preprocessing: Preprocessing
    batch: BatchSpec = Field(default_factory=BatchSpec)
    block_size: int | None = Field(
        None, ge=1, le=MAX_INPUT_SIDE, description="Recognizer: pixels per grid cell (32 for ResNet)."
    )
    classes: list[str] = Field(
        description="Segmenter: class names, index = channel, 0 = background. Recognizer: ['normal', 'defect']."
    )
    opset: int | None = None
    training: TrainingInfo | None = None
    tensorrt: TensorRTInfo | None = None
    created: str | None = None
    producer: str | None = Field(None, description="Tool and version that wrote this manifest.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        names = [o.name for o in self.outputs]
        if self.task == "recognizer":
            if "block_scores" not in names:
                raise ValueError("a recognizer must have an output named block_scores")
            if not self.block_size:
                raise ValueError("a recognizer must state its block_size")
        else:
            if "pixel_scores" not in names:
                raise ValueError("a segmenter must have an output named pixel_scores")
            if len(self.classes) < 2 or self.classes[0] != "background":
                raise ValueError("a segmenter's classes must start with 'background' and name at least one defect")
        if (self.format == "tensorrt") != (self.tensorrt is not None):
            raise ValueError("tensorrt info is required for, and only for, format tensorrt")
        if self.batch.min > self.batch.opt or self.batch.opt > self.batch.max:
            raise ValueError("batch sizes must satisfy min <= opt <= max")
        return self

    @property
    def grid(self) -> tuple[int, int]:
        if not self.block_size:
            raise ValueError("not a recognizer")
        return self.input.height // self.block_size, self.input.width // self.block_size

    @property
    def defect_classes(self) -> list[str]:
        return self.classes[1:]

    def output(self, name: str) -> OutputSpec:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)


class ManifestError(Exception):
    """A model that must not be used, with the reason in words."""


def manifest_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + MANIFEST_SUFFIX)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(model_path: str | Path, manifest: ModelManifest) -> Path:
    path = manifest_path(model_path)
    path.write_text(json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
    return path


def read_manifest(model_path: str | Path, *, verify_hash: bool = True) -> ModelManifest:
    """Load and check the manifest beside a model file. Raises ManifestError with a clear message."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ManifestError(f"model file not found: {model_path}")
    mpath = manifest_path(model_path)
    if not mpath.is_file():
        raise ManifestError(
            f"no manifest beside {model_path} (expected {mpath.name}); models must be exported by "
            "`inspector-train export` or `inspector-build-engine`, which write one"
        )
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"invalid manifest {mpath}: larger than {MAX_MANIFEST_BYTES // 1024} KiB")
        manifest = ModelManifest.model_validate_json(raw)
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {mpath}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # pydantic's errors, bad UTF-8, absurd nesting
        raise ManifestError(f"invalid manifest {mpath}: {' '.join(str(exc).split())}") from None
    if manifest.file != model_path.name:
        raise ManifestError(f"manifest {mpath} describes {manifest.file!r}, not {model_path.name!r}")
    if verify_hash:
        try:
            actual = sha256_file(model_path)
        except OSError as exc:
            raise ManifestError(f"cannot read {model_path}: {exc.strerror or exc}") from None
        if actual != manifest.sha256:
            raise ManifestError(
                f"{model_path} does not match its manifest (sha256 {actual[:12]}… vs {manifest.sha256[:12]}…): "
                "the file was replaced without re-exporting"
            )
    return manifest


def check_expectations(
    manifest: ModelManifest,
    *,
    task: str,
    expect_classes: list[str] | None = None,
    expect_input: tuple[int, int] | None = None,
    where: str = "",
) -> None:
    """Refuse a model whose manifest disagrees with what the line config expects."""
    prefix = f"{where}: " if where else ""
    if manifest.task != task:
        raise ManifestError(f"{prefix}model is a {manifest.task}, but the config uses it as the {task}")
    if expect_classes is not None and list(expect_classes) != list(manifest.classes):
        raise ManifestError(
            f"{prefix}model classes {manifest.classes} differ from expect_classes {list(expect_classes)}"
        )
    if expect_input is not None and tuple(expect_input) != (manifest.input.height, manifest.input.width):
        raise ManifestError(
            f"{prefix}model input is {manifest.input.height}x{manifest.input.width}, "
            f"config expects {expect_input[0]}x{expect_input[1]}"
        )
