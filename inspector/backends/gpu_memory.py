"""GPU buffers and streams, shared by the TensorRT and the CUDA backends.

Everything goes through cuda-python's `cuda.bindings.runtime` (imported lazily: a CPU box never loads it), and
every call's error code is checked — cuda-python returns `(error, *values)` tuples and raises nothing itself, so
an unchecked call fails silently and the next one reports a misleading error.

What a backend gets from here:
- `IOBuffer`: a pinned (page-locked) host array and a device buffer of the same size, for one model tensor at
  the largest batch. Pinned memory is what lets `cudaMemcpyAsync` be truly asynchronous (and be captured into a
  CUDA graph); the host array is a NumPy view of it, so the pipeline writes frames straight into DMA-able memory.
- `Stream`: one non-blocking stream per engine; nothing ever runs on the legacy default stream, which would
  serialise the two models against each other.
- `CudaGraphs`: one instantiated CUDA graph per batch size (upload + inference + download), captured lazily on
  first use, replayed with a single launch — the CPU cost of a batch drops to one call.
- `device_info`: the GPU's name and compute capability, which engine manifests are checked against.

The uint8 input travels to the GPU as uint8 (1 byte/pixel); the float conversion and normalisation happen in
the graph. Resizing on the GPU is in `gpu_preprocess`; the run loop both backends share is `gpu_io.DeviceIO`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from inspector.backends.base import BackendError


class CudaError(BackendError):
    """A CUDA runtime call failed; the message names the call and CUDA's error name and description."""


def cudart() -> Any:
    """The CUDA runtime bindings (cuda-python >= 12: cuda.bindings.runtime; older: cuda.cudart)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python 11.x / early 12.x layout
        except ImportError:
            raise BackendError(
                "the GPU backends need cuda-python (pip install 'inspector[gpu]' or pip install cuda-python)"
            ) from None
    return runtime


def check(result: tuple[Any, ...], what: str) -> Any:
    """Unpack a cuda-python runtime result `(err, *values)`: raise CudaError unless err is cudaSuccess.

    Returns None, the single value, or a tuple of values.
    """
    rt = cudart()
    err, *values = result
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        _, text = rt.cudaGetErrorString(err)
        name = name.decode() if isinstance(name, bytes) else str(name)
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise CudaError(f"{what} failed: {name}: {text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class DeviceInfo:
    ordinal: int
    name: str
    compute_capability: str  # "major.minor", as engine manifests record it
    total_memory: int
    runtime_version: int  # e.g. 12040 for CUDA 12.4
    driver_version: int


def gpu_available(ordinal: int = 0) -> tuple[bool, str]:
    """(True, "") if cuda-python loads and device `ordinal` exists; else (False, why). Never raises."""
    try:
        rt = cudart()
        count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except BackendError as exc:
        return False, str(exc)
    except Exception as exc:  # a broken driver install shows up in many ways; the reason is what matters
        return False, f"CUDA unusable: {exc}"
    if count <= ordinal:
        return False, f"CUDA device {ordinal} not present ({count} device(s))"
    return True, ""


def set_device(ordinal: int) -> None:
    rt = cudart()
    check(rt.cudaSetDevice(ordinal), f"cudaSetDevice({ordinal})")


def device_info(ordinal: int = 0) -> DeviceInfo:
    rt = cudart()
    props = check(rt.cudaGetDeviceProperties(ordinal), f"cudaGetDeviceProperties({ordinal})")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(
        ordinal=ordinal,
        name=name.rstrip("\x00").strip(),
        compute_capability=f"{props.major}.{props.minor}",
        total_memory=int(props.totalGlobalMem),
        runtime_version=int(check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
        driver_version=int(check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion")),
    )


class Stream:
    """A non-blocking CUDA stream: one per engine, so recognizer and segmenter never serialise on stream 0."""

    def __init__(self) -> None:
        rt = cudart()
        self._rt = rt
        self.stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def handle(self) -> int:
        """The raw cudaStream_t as an int (what TensorRT's execute_async_v3 and ONNX Runtime take)."""
        return int(self.stream)

    def synchronize(self) -> None:
        check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.stream is not None:
            check(self._rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


class DeviceBuffer:
    """`nbytes` of device memory (cudaMalloc: 256-byte aligned, which every TensorRT tensor needs)."""

    def __init__(self, nbytes: int):
        rt = cudart()
        self._rt = rt
        self.nbytes = int(nbytes)
        self.ptr: int = int(check(rt.cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes})"))

    def close(self) -> None:
        if self.ptr:
            check(self._rt.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedArray:
    """A NumPy array in page-locked host memory (cudaHostAlloc), so copies to and from it are asynchronous DMA
    and can be captured into a CUDA graph. The array is a view: keep this object alive while it is used."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type):
        rt = cudart()
        self._rt = rt
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr: int = int(
            check(rt.cudaHostAlloc(max(self.nbytes, 1), rt.cudaHostAllocDefault), f"cudaHostAlloc({self.nbytes})")
        )
        raw = memoryview((ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.ptr)).cast("B")
        self.array: np.ndarray = np.frombuffer(raw, dtype=np.uint8, count=self.nbytes).view(self.dtype).reshape(shape)
        self.array[...] = 0

    def close(self) -> None:
        if self.ptr:
            self.array = np.empty(0, self.dtype)  # drop the view before the memory goes
            check(self._rt.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class IOBuffer:
    """One model tensor at the largest batch: pinned host array + device buffer, with row-wise async copies.

    `shape` is (max_batch, ...). Copies move rows [:n] only, so a batch of 1 in an engine built for 16 costs one
    frame's transfer.
    """

    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type):
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.host = PinnedArray(self.shape, self.dtype)
        try:
            self.device = DeviceBuffer(self.host.nbytes)
        except BaseException:
            self.host.close()
            raise

    @property
    def array(self) -> np.ndarray:
        return self.host.array

    def upload(self, n: int, stream: Stream) -> None:
        rt = cudart()
        check(
            rt.cudaMemcpyAsync(
                self.device.ptr,
                self.host.ptr,
                n * self.row_bytes,
                rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                stream.stream,
            ),
            f"cudaMemcpyAsync(host->device, {self.name})",
        )

    def download(self, n: int, stream: Stream) -> None:
        rt = cudart()
        check(
            rt.cudaMemcpyAsync(
                self.host.ptr,
                self.device.ptr,
                n * self.row_bytes,
                rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                stream.stream,
            ),
            f"cudaMemcpyAsync(device->host, {self.name})",
        )

    def close(self) -> None:
        self.device.close()
        self.host.close()


class CudaGraphs:
    """One CUDA graph per batch size, captured on first use from `enqueue(n)` on the engine's stream.

    Capture uses cudaStreamCaptureModeThreadLocal so another thread's CUDA calls (the other model's backend)
    do not invalidate it. A capture that fails (an operation that cannot be captured) disables graphs for that
    backend and says so once; inference then runs by plain enqueue, which is always correct.
    """

    def __init__(self, stream: Stream, enqueue: Callable[[int], None], on_fallback: Callable[[str], None]):
        self._rt = cudart()
        self._stream = stream
        self._enqueue = enqueue
        self._on_fallback = on_fallback
        self._execs: dict[int, Any] = {}
        self.enabled = True

    def launch(self, n: int) -> None:
        """Run `enqueue(n)` through its graph (capturing it first if needed), or directly if graphs are off."""
        if not self.enabled:
            self._enqueue(n)
            return
        graph_exec = self._execs.get(n)
        if graph_exec is None:
            try:
                graph_exec = self._capture(n)
            except CudaError as exc:
                self.enabled = False
                self._on_fallback(f"CUDA graph capture failed for batch {n}; running without graphs: {exc}")
                self._stream.synchronize()
                self._enqueue(n)
                return
            self._execs[n] = graph_exec
        check(self._rt.cudaGraphLaunch(graph_exec, self._stream.stream), "cudaGraphLaunch")

    def _capture(self, n: int) -> Any:
        rt = self._rt
        # One plain run first: TensorRT (and cuDNN) do lazy per-shape setup on the first enqueue after a shape
        # change, some of it synchronous, which must not happen inside a capture.
        self._enqueue(n)
        self._stream.synchronize()
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt.cudaStreamBeginCapture(self._stream.stream, mode), "cudaStreamBeginCapture")
        try:
            self._enqueue(n)
        finally:
            # End the capture even if enqueue failed, or the stream stays in capture mode forever.
            graph = check(rt.cudaStreamEndCapture(self._stream.stream), "cudaStreamEndCapture")
        try:
            return check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def close(self) -> None:
        for graph_exec in self._execs.values():
            check(self._rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
        self._execs.clear()


class EventTimer:
    """GPU-side elapsed time between two points on a stream (cudaEvent), for the benchmarks."""

    def __init__(self) -> None:
        rt = cudart()
        self._rt = rt
        self.start = check(rt.cudaEventCreate(), "cudaEventCreate")
        self.end = check(rt.cudaEventCreate(), "cudaEventCreate")

    def record_start(self, stream: Stream) -> None:
        check(self._rt.cudaEventRecord(self.start, stream.stream), "cudaEventRecord")

    def record_end(self, stream: Stream) -> None:
        check(self._rt.cudaEventRecord(self.end, stream.stream), "cudaEventRecord")

    def elapsed_ms(self) -> float:
        check(self._rt.cudaEventSynchronize(self.end), "cudaEventSynchronize")
        return float(check(self._rt.cudaEventElapsedTime(self.start, self.end), "cudaEventElapsedTime"))

    def close(self) -> None:
        check(self._rt.cudaEventDestroy(self.start), "cudaEventDestroy")
        check(self._rt.cudaEventDestroy(self.end), "cudaEventDestroy")


def close_all(*things: Any) -> None:
    """Close resources in reverse order of creation, continuing past failures; re-raise the first one."""
    first: BaseException | None = None
    for thing in reversed(things):
        if thing is None:
            continue
        try:
            thing.close()
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first
