"""Inference backends. Each is one module implementing `Backend`; `BACKENDS` maps config `models.backend`
to it. Entries are import paths so that a CPU box never imports TensorRT or CUDA libraries.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from inspector.manifest import ModelManifest

BACKENDS: dict[str, str] = {
    "onnxruntime": "inspector.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "inspector.backends.tensorrt:TensorRTBackend",
    "cuda": "inspector.backends.cuda:CudaBackend",
}


class BackendError(Exception):
    """A model cannot be loaded or run by this backend; the message says why and what to do."""


class Backend(Protocol):
    """Runs one model. Constructed as Backend(model_path, manifest, settings, max_batch).

    `inputs(n)` is the preallocated uint8 (n, H, W, C) input for a batch of n; callers fill it (through
    `inspector.preprocess.Preprocessor`, whose buffer can be this very array) and call `run(n)`, which
    returns preallocated float32 outputs by name, valid until the next `run`. No allocation per call.
    """

    manifest: ModelManifest
    max_batch: int

    def input_buffer(self) -> np.ndarray:
        """The (max_batch, H, W, C) uint8 input array; rows [:n] are the batch for run(n)."""

    def run(self, n: int) -> dict[str, np.ndarray]:
        """Infer on input_buffer()[:n]; outputs are views of preallocated arrays, first dim n."""

    def close(self) -> None: ...


def backend_class(name: str) -> type:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
