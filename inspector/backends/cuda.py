"""CUDA backend: the exported ONNX model on an NVIDIA GPU through ONNX Runtime's CUDA execution provider.

Why this choice (issue 6): the GPU machines this project is verified on have CUDA, cuDNN (from PyTorch's
wheels) and cuda-python but no TensorRT, and the daemon must not import torch. ONNX Runtime's CUDA provider
runs the very same ONNX file as the CPU default (same graph, same normalisation, same output names) with cuDNN
kernels, and it can be bound to memory and a stream we own:
- IOBinding binds the input and outputs to this backend's preallocated device buffers (`gpu_io.DeviceIO`,
  the same buffers/stream/copies the TensorRT backend uses), so ONNX Runtime allocates and copies nothing;
- `user_compute_stream` makes its kernels run on this backend's stream, so upload -> inference -> download are
  ordered on one stream and the host waits once, and the run option
  `disable_synchronize_execution_providers` stops ONNX Runtime from synchronizing on its own;
- CUDA graphs are ONNX Runtime's own (`enable_cuda_graph`, one graph per batch size via `gpu_graph_id`): its
  allocator must stay out of the capture, so our `CudaGraphs` wrapper is not used here. If the graph cannot be
  captured (a node placed on the CPU), the backend falls back to plain runs and says so.

Needs `onnxruntime-gpu` (instead of `onnxruntime`) and cuda-python. TF32 is left on (ONNX Runtime's default on
Ampere and newer): agreement with the CPU is then at the FP16 tolerance, see docs/GPU.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from inspector.backends.base import BackendError, BackendSettings
from inspector.backends.gpu_io import DeviceIO
from inspector.backends.gpu_memory import gpu_available, set_device
from inspector.config import TensorRTSettings
from inspector.manifest import ModelManifest

log = logging.getLogger(__name__)


def _import_onnxruntime_cuda() -> Any:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError(
            "models.backend is cuda but this ONNX Runtime has no CUDA execution provider "
            f"(providers: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu instead of onnxruntime"
        )
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        # onnxruntime-gpu >= 1.21 can load CUDA/cuDNN from the nvidia-* wheels (e.g. PyTorch's) without torch.
        try:
            preload()
        except Exception as exc:  # missing DLLs show up again, more precisely, when the session is created
            log.debug("onnxruntime.preload_dlls: %s", exc)
    return ort


class CudaBackend(DeviceIO):
    """Backend(model_path, manifest, settings, max_batch) on ONNX Runtime's CUDA execution provider.

    `settings` is `models.tensorrt` (its `device` and `cuda_graphs` apply to both GPU backends); any object with
    those attributes works, and missing ones take their defaults (device 0, graphs on).
    """

    graphs_allowed = False  # ONNX Runtime captures its own graphs; see the module docstring

    @classmethod
    def unavailable(cls, settings: BackendSettings) -> str | None:
        try:
            _import_onnxruntime_cuda()
        except BackendError as exc:
            return str(exc)
        ok, why = gpu_available(settings.device if isinstance(settings, TensorRTSettings) else 0)
        return None if ok else why

    def __init__(self, model_path: str | Path, manifest: ModelManifest, settings: Any, max_batch: int):
        if manifest.format != "onnx":
            raise BackendError(f"the cuda backend runs ONNX models; {model_path} is a {manifest.format} model")
        if max_batch > manifest.batch.max or (not manifest.batch.dynamic and max_batch != manifest.batch.max):
            raise BackendError(
                f"{model_path} accepts batches up to {manifest.batch.max}"
                f"{'' if manifest.batch.dynamic else ' (static)'}, the pipeline needs {max_batch}"
            )
        self.ort = _import_onnxruntime_cuda()
        self.manifest = manifest
        self.max_batch = max_batch
        self.device = int(getattr(settings, "device", 0))
        self.path = Path(model_path)
        set_device(self.device)
        spec = manifest.input
        outputs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        probe = self.ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        for o in probe.get_outputs():
            dims = list(o.shape[1:])
            if not all(isinstance(d, int) for d in dims):
                raise BackendError(f"{model_path} output {o.name} has dynamic non-batch dimensions {o.shape}")
            outputs[o.name] = ((max_batch, *dims), np.dtype(np.float16 if "float16" in o.type else np.float32))
        del probe
        missing = {o.name for o in manifest.outputs} - set(outputs)
        if missing:
            raise BackendError(f"{model_path} lacks outputs {sorted(missing)} named in its manifest")
        self._init_io(
            spec.name,
            (max_batch, spec.height, spec.width, spec.channels),
            outputs,
            cuda_graphs=False,
            log=log.warning,
        )
        self._use_ort_graphs = bool(getattr(settings, "cuda_graphs", True))
        self._make_session()

    def _make_session(self) -> None:
        ort = self.ort
        options = {
            "device_id": str(self.device),
            "user_compute_stream": str(self.stream.handle),
            "cudnn_conv_algo_search": "EXHAUSTIVE",  # once per shape at start-up; the fastest kernels after
        }
        if self._use_ort_graphs:
            options["enable_cuda_graph"] = "1"
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.path), session_options, providers=[("CUDAExecutionProvider", options)]
        )
        if "CUDAExecutionProvider" not in self.session.get_providers():
            raise BackendError(f"ONNX Runtime did not place {self.path} on the GPU (CUDA provider failed to load)")
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._bindings: dict[int, Any] = {}

    def _binding(self, n: int) -> Any:
        """One IOBinding per batch size, bound to the fixed device buffers (fixed addresses: graph-safe)."""
        binding = self._bindings.get(n)
        if binding is None:
            spec = self.manifest.input
            binding = self.session.io_binding()
            binding.bind_input(
                spec.name,
                "cuda",
                self.device,
                np.uint8,
                (n, spec.height, spec.width, spec.channels),
                self.input.device.ptr,
            )
            for name, buf in self.outputs.items():
                binding.bind_output(name, "cuda", self.device, buf.dtype.type, (n, *buf.shape[1:]), buf.device.ptr)
            self._bindings[n] = binding
        return binding

    def _infer(self, n: int) -> None:
        if self._use_ort_graphs:
            self.run_options.add_run_config_entry("gpu_graph_id", str(n))
        try:
            self.session.run_with_iobinding(self._binding(n), self.run_options)
        except Exception as exc:
            if not self._use_ort_graphs:
                raise BackendError(f"ONNX Runtime (CUDA) failed on {self.path}: {exc}") from exc
            log.warning("ONNX Runtime could not use CUDA graphs for %s (%s); running without", self.path, exc)
            self.stream.synchronize()
            self._use_ort_graphs = False
            self._make_session()
            self.session.run_with_iobinding(self._binding(n), self.run_options)

    def close(self) -> None:
        self._bindings = {}
        self.session = None
        self._close_io()
