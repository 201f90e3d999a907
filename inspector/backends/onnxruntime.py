"""ONNX Runtime on the CPU: the embedded default backend.

Inputs and outputs live in arrays allocated once at load time. For every batch size 1..max_batch an
IOBinding binds the leading rows of those arrays (contiguous views, so no copy), and `run(n)` only calls
`run_with_iobinding`: no per-call allocation of tensors, ONNX Runtime writes straight into our buffers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from inspector.backends.base import BackendError, BackendSettings
from inspector.config import OnnxRuntimeSettings
from inspector.manifest import ModelManifest

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}


class OnnxRuntimeBackend:
    def __init__(
        self,
        model_path: str | Path,
        manifest: ModelManifest,
        settings: OnnxRuntimeSettings | None = None,
        max_batch: int = 1,
    ):
        import onnxruntime as ort

        settings = settings or OnnxRuntimeSettings()
        self.manifest = manifest
        self.model_path = Path(model_path)
        if max_batch < 1:
            raise BackendError(f"{self.model_path.name}: max_batch must be >= 1, got {max_batch}")
        if max_batch > manifest.batch.max:
            raise BackendError(
                f"{self.model_path.name}: pipeline batch_size {max_batch} exceeds the model's largest batch "
                f"{manifest.batch.max}; lower pipeline.batch_size or re-export the model"
            )
        # A model exported with a fixed batch always runs its full batch; rows past n are ignored.
        self._fixed_batch = None if manifest.batch.dynamic else manifest.batch.max
        self.max_batch = max_batch

        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        level = _OPT_LEVELS.get(settings.graph_optimization, "ORT_ENABLE_ALL")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        # Fatal only: the optimiser's warnings are noise for operators, and a failed run raises with ORT's message
        # (logged by the pipeline, rate-limited) while ORT would also print its own unthrottled error line per batch.
        options.log_severity_level = 4
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for unreadable/invalid graphs
            raise BackendError(f"ONNX Runtime cannot load {self.model_path}: {exc}") from None

        spec = manifest.input
        self._check_input(spec.name, (spec.height, spec.width, spec.channels))
        rows = self._fixed_batch or max_batch
        self._input = np.zeros((rows, spec.height, spec.width, spec.channels), dtype=np.uint8)
        self._outputs = self._allocate_outputs(rows)
        self._bindings = [self._bind(n) for n in range(1, max_batch + 1)]
        # One result dict per batch size, built once: run() returns it without allocating.
        self._results = [{name: buf[:n] for name, buf in self._outputs.items()} for n in range(1, max_batch + 1)]

    @classmethod
    def unavailable(cls, settings: BackendSettings) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"ONNX Runtime cannot be imported ({exc}); reinstall inspector"
        return None

    # ----------------------------------------------------------------------------------------- checks

    def _check_input(self, name: str, hwc: tuple[int, int, int]) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{self.model_path.name}: expected one input, the graph has {len(inputs)}")
        graph_in = inputs[0]
        if graph_in.name != name:
            raise BackendError(f"{self.model_path.name}: input is named {graph_in.name!r}, manifest says {name!r}")
        if graph_in.type != "tensor(uint8)":
            raise BackendError(f"{self.model_path.name}: input type {graph_in.type}, manifest says uint8")
        shape = graph_in.shape
        if len(shape) != 4 or tuple(shape[1:]) != hwc:
            raise BackendError(
                f"{self.model_path.name}: input shape {shape} does not match the manifest's NHWC (N, {hwc[0]}, "
                f"{hwc[1]}, {hwc[2]})"
            )
        if self._fixed_batch is not None and shape[0] != self._fixed_batch:
            raise BackendError(f"{self.model_path.name}: graph batch {shape[0]} differs from manifest batch")

    def _allocate_outputs(self, rows: int) -> dict[str, np.ndarray]:
        graph_outputs = {o.name: o for o in self.session.get_outputs()}
        buffers: dict[str, np.ndarray] = {}
        for spec in self.manifest.outputs:
            graph_out = graph_outputs.get(spec.name)
            if graph_out is None:
                raise BackendError(
                    f"{self.model_path.name}: manifest output {spec.name!r} is not in the graph "
                    f"(graph outputs: {sorted(graph_outputs)})"
                )
            dtype = _ORT_TYPES.get(graph_out.type)
            if dtype not in (np.float32, np.float16):
                raise BackendError(f"{self.model_path.name}: output {spec.name!r} has type {graph_out.type}")
            dims = graph_out.shape[1:]
            if not all(isinstance(d, int) for d in dims):
                raise BackendError(
                    f"{self.model_path.name}: output {spec.name!r} has dynamic dimensions {graph_out.shape}; "
                    "only the batch may be dynamic"
                )
            expected = [d for d in spec.shape[1:]]
            if any(isinstance(e, int) and e != d for e, d in zip(expected, dims, strict=False)) or len(expected) != len(
                dims
            ):
                raise BackendError(
                    f"{self.model_path.name}: output {spec.name!r} shape {graph_out.shape} differs from the "
                    f"manifest's {spec.shape}"
                )
            buffers[spec.name] = np.zeros((rows, *dims), dtype=dtype)
        return buffers

    def _bind(self, n: int) -> tuple[Any, list[Any]]:
        import onnxruntime as ort

        rows = self._fixed_batch or n
        binding = self.session.io_binding()
        # OrtValues wrap our arrays without copying; keeping them referenced keeps the binding valid.
        values = [ort.OrtValue.ortvalue_from_numpy(self._input[:rows])]
        binding.bind_ortvalue_input(self.manifest.input.name, values[0])
        for name, buf in self._outputs.items():
            values.append(ort.OrtValue.ortvalue_from_numpy(buf[:rows]))
            binding.bind_ortvalue_output(name, values[-1])
        return binding, values

    # ---------------------------------------------------------------------------------------- running

    def input_buffer(self) -> np.ndarray:
        return self._input

    def run(self, n: int) -> dict[str, np.ndarray]:
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch {n} outside 1..{self.max_batch}")
        binding, _ = self._bindings[n - 1]
        self.session.run_with_iobinding(binding)
        return self._results[n - 1]

    def close(self) -> None:
        self._bindings = []
        self._results = []
        self.session = None
