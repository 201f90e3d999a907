"""The run loop both GPU backends share (`DeviceIO`): pinned host input (or raw frames resized on the GPU) ->
device, the model's inference on the backend's own stream, device -> pinned outputs, one synchronize.

Built from the primitives in `gpu_memory` and the resize kernel in `gpu_preprocess`; its own module so that
neither of those depends on the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from inspector.backends.gpu_memory import CudaGraphs, IOBuffer, Stream, close_all
from inspector.backends.gpu_preprocess import GpuResizer
from inspector.manifest import ModelManifest


class DeviceIO:
    """The run loop both GPU backends share: pinned input -> device (or raw frames -> GPU resize), the model's
    inference on the backend's stream, device -> pinned outputs, one synchronize, outputs returned as views.

    Subclasses implement `_infer(n)` (enqueue inference for rows [:n] on `self.stream`, reading
    `self.input.device` and writing each `self.outputs[name].device`) and may set `graphs_allowed = False`.
    Outputs are read only after the stream is synchronized. No allocation per call.
    """

    graphs_allowed = True
    # Set by the subclass before _init_io (the backend's manifest and CUDA device).
    manifest: ModelManifest
    device: int = 0

    def _init_io(
        self,
        input_name: str,
        input_shape: tuple[int, ...],
        outputs: dict[str, tuple[tuple[int, ...], np.dtype]],
        *,
        cuda_graphs: bool,
        log: Callable[[str], None],
    ) -> None:
        self._log = log
        self.stream = Stream()
        self.input = IOBuffer(input_name, input_shape, np.uint8)
        self.outputs = {name: IOBuffer(name, shape, dtype) for name, (shape, dtype) in outputs.items()}
        # Outputs in float16 (a strongly typed FP16 engine) are widened into float32 arrays, as the Protocol says.
        self._float32 = {
            name: np.zeros(buf.shape, np.float32) for name, buf in self.outputs.items() if buf.dtype != np.float32
        }
        self.resizer: GpuResizer | None = None
        self._want_graphs = cuda_graphs and self.graphs_allowed
        self.graphs = CudaGraphs(self.stream, self._enqueue, log) if self._want_graphs else None

    def input_buffer(self) -> np.ndarray:
        return self.input.array

    def enable_gpu_resize(
        self,
        frame_shape: tuple[int, int, int],
        pixel_format: str,
        interpolation: Literal["area", "linear"] | None = None,
    ) -> np.ndarray:
        """Switch to GPU preprocessing: returns the pinned (max_batch, frame_h, frame_w, channels) uint8 array
        the caller fills with raw frames instead of `input_buffer()`; `run(n)` uploads and resizes them."""
        manifest = self.manifest
        self.resizer = GpuResizer(
            self.input.shape[0],
            frame_shape,
            (manifest.input.height, manifest.input.width),
            pixel_format=pixel_format,
            color=manifest.preprocessing.color,
            interpolation=interpolation or manifest.preprocessing.resize,
            device=self.device,
        )
        if self.graphs is not None:  # captured graphs upload the old buffer: capture afresh
            self.graphs.close()
            self.graphs = CudaGraphs(self.stream, self._enqueue, self._log)
        return self.resizer.frames.array

    def _infer(self, n: int) -> None:
        raise NotImplementedError

    def _enqueue(self, n: int) -> None:
        if self.resizer is not None:
            self.resizer.enqueue(n, self.input.device.ptr, self.stream)
        else:
            self.input.upload(n, self.stream)
        self._infer(n)
        for buf in self.outputs.values():
            buf.download(n, self.stream)

    def run(self, n: int) -> dict[str, np.ndarray]:
        max_batch = self.input.shape[0]
        if not 1 <= n <= max_batch:
            raise ValueError(f"batch {n} outside 1..{max_batch}")
        if self.graphs is not None:
            self.graphs.launch(n)
        else:
            self._enqueue(n)
        self.stream.synchronize()
        result = {}
        for name, buf in self.outputs.items():
            if name in self._float32:
                np.copyto(self._float32[name][:n], buf.array[:n])
                result[name] = self._float32[name][:n]
            else:
                result[name] = buf.array[:n]
        return result

    def _close_io(self) -> None:
        things = [getattr(self, "stream", None), getattr(self, "input", None)]
        things += list(getattr(self, "outputs", {}).values())
        things += [getattr(self, "resizer", None), getattr(self, "graphs", None)]
        close_all(*things)
        self.graphs = None
        self.resizer = None
