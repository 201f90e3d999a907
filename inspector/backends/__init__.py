"""Inference backends. Each is one module implementing `Backend`; `BACKENDS` maps config `models.backend` to it.

Importing a backend module is cheap and needs none of its libraries: ONNX Runtime, TensorRT and CUDA are
imported when a backend is constructed, so a CPU box never loads TensorRT or CUDA, and a TensorRT config on a
box without TensorRT is refused by the constructor in one line (exit 3), not by an import traceback.
Backends import nothing from training (`inspector.train`) or engine building (`inspector.build`).
"""

from __future__ import annotations

from inspector.backends.base import Backend, BackendError, BackendSettings
from inspector.backends.cuda import CudaBackend
from inspector.backends.onnxruntime import OnnxRuntimeBackend
from inspector.backends.tensorrt import TensorRTBackend

__all__ = ["BACKENDS", "Backend", "BackendError", "BackendSettings", "backend_class"]

BACKENDS: dict[str, type[Backend]] = {
    "onnxruntime": OnnxRuntimeBackend,
    "tensorrt": TensorRTBackend,
    "cuda": CudaBackend,
}


def backend_class(name: str) -> type[Backend]:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
