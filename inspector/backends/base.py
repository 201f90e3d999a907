"""What every backend is: the `Backend` Protocol, its settings type and its error (imported by each backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from inspector.config import OnnxRuntimeSettings, TensorRTSettings
from inspector.manifest import ModelManifest

# What a backend is configured with: models.onnxruntime, or models.tensorrt for both GPU backends.
BackendSettings = OnnxRuntimeSettings | TensorRTSettings


class BackendError(Exception):
    """A model cannot be loaded or run by this backend; the message says why and what to do."""


class Backend(Protocol):
    """Runs one model. Constructed as Backend(model_path, manifest, settings, max_batch).

    `input_buffer()` is the preallocated uint8 (max_batch, H, W, C) input; callers fill its leading rows
    (through `inspector.preprocess.Preprocessor`, whose buffer is this very array) and call `run(n)`, which
    returns preallocated float32 outputs by name, valid until the next `run`. No allocation per call.
    """

    manifest: ModelManifest
    max_batch: int

    def __init__(self, model_path: Path, manifest: ModelManifest, settings: BackendSettings, max_batch: int): ...

    @classmethod
    def unavailable(cls, settings: BackendSettings) -> str | None:
        """Why this backend cannot run on this machine at all (a library or the GPU missing), in one line; None
        when it can. Checked once before any model is opened, so a missing library is one clear line, not one
        failure per model or a traceback."""
        ...

    def input_buffer(self) -> np.ndarray:
        """The (max_batch, H, W, C) uint8 input array; rows [:n] are the batch for run(n)."""
        ...

    def run(self, n: int) -> dict[str, np.ndarray]:
        """Infer on input_buffer()[:n]; outputs are views of preallocated arrays, first dim n."""
        ...

    def close(self) -> None: ...
