"""Resize and channel conversion on the GPU: raw uint8 frames up, network-sized uint8 input out, on device.

Why: a 5-megapixel mono frame costs the CPU a few milliseconds of `cv2.resize(INTER_AREA)` per frame, which at
line rate is a core or more; uploading the raw frame (5 MB, ~0.2 ms over PCIe 4 from pinned memory) and
resizing it in a kernel frees that core. Whether it is faster end-to-end depends on frame size and link speed,
so `tools/bench_gpu.py` measures both paths and the choice stays with the operator.

Same answers as `inspector.preprocess` (the one definition of preprocessing): the kernel applies the same
separable interpolation weights OpenCV uses — INTER_AREA's box-overlap weights, INTER_LINEAR's half-pixel
weights — computed here on the host (`area_table`, `linear_table`), then OpenCV's own fixed-point colour
conversion (RGB->gray with 4899/9617/1868 >> 14). `resize_reference` is the kernel's arithmetic in NumPy;
CI checks it against `inspector.preprocess.resize_image`. The result matches OpenCV to within 1 grey level on
a few pixels (OpenCV's fast 2x2 path rounds halves up, its generic path to even; the kernel rounds to even),
which is far below what the networks respond to; the GPU test checks kernel == reference on the device.

The normalisation stays inside the model graph, as the manifest says; the engine input is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from inspector.backends.gpu_memory import DeviceBuffer, IOBuffer, Stream, check, cudart, device_info

# OpenCV's RGB->gray fixed-point coefficients (imgproc/src/color.hpp: R2Y, G2Y, B2Y; yuv_shift = 14).
_R2Y, _G2Y, _B2Y, _SHIFT = 4899, 9617, 1868, 14

# Channel conversion codes shared by the kernel and the reference.
CONVERT = {"none": 0, "gray2rgb": 1, "rgb2gray": 2, "bgr2gray": 3, "bgr2rgb": 4}


@dataclass(frozen=True)
class Table:
    """Separable resize weights along one axis: dst[i] = sum_k weight[i, k] * src[index[i, k]]."""

    index: np.ndarray  # (dst, taps) int32, always a valid source index (padding repeats one, with weight 0)
    weight: np.ndarray  # (dst, taps) float32


def _pack(rows: list[list[tuple[int, float]]]) -> Table:
    taps = max(len(r) for r in rows)
    index = np.zeros((len(rows), taps), np.int32)
    weight = np.zeros((len(rows), taps), np.float32)
    for i, row in enumerate(rows):
        for k, (s, w) in enumerate(row):
            index[i, k], weight[i, k] = s, w
        index[i, len(row) :] = row[-1][0]
    return Table(index, weight)


def area_table(src: int, dst: int) -> Table:
    """OpenCV INTER_AREA weights for shrinking `src` -> `dst` (imgproc/src/resize.cpp, computeResizeAreaTab)."""
    if dst > src:
        raise ValueError(f"GPU area resize shrinks only ({src} -> {dst}); use CPU preprocessing to enlarge")
    scale = src / dst
    rows: list[list[tuple[int, float]]] = []
    for dx in range(dst):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        sx1 = math.ceil(fsx1)
        sx2 = math.floor(fsx2)
        sx2 = min(sx2, src - 1)
        sx1 = min(sx1, sx2)
        cell = min(scale, src - fsx1)
        row: list[tuple[int, float]] = []
        if sx1 - fsx1 > 1e-3:
            row.append((sx1 - 1, (sx1 - fsx1) / cell))
        row += [(sx, 1.0 / cell) for sx in range(sx1, sx2)]
        if fsx2 - sx2 > 1e-3:
            row.append((sx2, min(min(fsx2 - sx2, 1.0), cell) / cell))
        rows.append(row)
    return _pack(rows)


def linear_table(src: int, dst: int) -> Table:
    """OpenCV INTER_LINEAR weights (half-pixel centres, edge clamped), in float rather than 11-bit fixed point."""
    scale = src / dst
    rows = []
    for dx in range(dst):
        fx = (dx + 0.5) * scale - 0.5
        sx = math.floor(fx)
        fx -= sx
        if sx < 0:
            fx, sx = 0.0, 0
        if sx >= src - 1:
            fx, sx = 0.0, src - 1
        rows.append([(sx, 1.0 - fx), (min(sx + 1, src - 1), fx)])
    return _pack(rows)


def tables(
    frame_hw: tuple[int, int], size: tuple[int, int], interpolation: Literal["area", "linear"]
) -> tuple[Table, Table]:
    make = area_table if interpolation == "area" else linear_table
    return make(frame_hw[0], size[0]), make(frame_hw[1], size[1])


def conversion(in_channels: int, pixel_format: str, color: Literal["gray", "rgb"]) -> str:
    """The conversion `inspector.preprocess.Preprocessor` applies after resizing, by name."""
    if color == "gray":
        if in_channels == 1:
            return "none"
        return "rgb2gray" if pixel_format == "rgb8" else "bgr2gray"
    if in_channels == 1:
        return "gray2rgb"
    return "bgr2rgb" if pixel_format == "bgr8" else "none"


def resize_reference(
    frame: np.ndarray,
    size: tuple[int, int],
    *,
    pixel_format: str = "mono8",
    color: Literal["gray", "rgb"] = "gray",
    interpolation: Literal["area", "linear"] = "area",
) -> np.ndarray:
    """The kernel's arithmetic in NumPy: (H, W[, C]) uint8 -> (height, width, channels) uint8."""
    if frame.ndim == 2:
        frame = frame[:, :, None]
    ytab, xtab = tables(frame.shape[:2], size, interpolation)
    src = frame.astype(np.float32)
    # Horizontal then vertical, accumulating taps in order in float32, as the kernel does.
    h = np.zeros((frame.shape[0], size[1], frame.shape[2]), np.float32)
    for k in range(xtab.index.shape[1]):
        h += xtab.weight[None, :, k, None] * src[:, xtab.index[:, k], :]
    v = np.zeros((size[0], size[1], frame.shape[2]), np.float32)
    for k in range(ytab.index.shape[1]):
        v += ytab.weight[:, k, None, None] * h[ytab.index[:, k], :, :]
    resized = np.clip(np.rint(v), 0, 255).astype(np.int32)
    return _convert(resized, conversion(frame.shape[2], pixel_format, color))


def _convert(img: np.ndarray, code: str) -> np.ndarray:
    if code == "none":
        out = img
    elif code == "gray2rgb":
        out = np.repeat(img, 3, axis=2)
    elif code == "bgr2rgb":
        out = img[:, :, ::-1]
    else:
        r, g, b = (
            (img[:, :, 0], img[:, :, 1], img[:, :, 2])
            if code == "rgb2gray"
            else (img[:, :, 2], img[:, :, 1], img[:, :, 0])
        )
        out = ((r * _R2Y + g * _G2Y + b * _B2Y + (1 << (_SHIFT - 1))) >> _SHIFT)[:, :, None]
    return np.ascontiguousarray(out, dtype=np.uint8)


KERNEL_SOURCE = r"""
extern "C" __global__ void resize_convert_u8(
    const unsigned char* __restrict__ src, int src_h, int src_w, int src_c,
    unsigned char* __restrict__ dst, int dst_h, int dst_w,
    const int* __restrict__ yidx, const float* __restrict__ yw, int ky,
    const int* __restrict__ xidx, const float* __restrict__ xw, int kx,
    int convert)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int b = blockIdx.z;
    if (x >= dst_w || y >= dst_h) return;
    const unsigned char* img = src + (size_t)b * src_h * src_w * src_c;
    int v[3] = {0, 0, 0};
    for (int c = 0; c < src_c; ++c) {
        float acc = 0.f;
        for (int i = 0; i < ky; ++i) {
            const unsigned char* row = img + (size_t)yidx[y * ky + i] * src_w * src_c;
            float h = 0.f;
            for (int j = 0; j < kx; ++j) h += xw[x * kx + j] * (float)row[xidx[x * kx + j] * src_c + c];
            acc += yw[y * ky + i] * h;
        }
        v[c] = min(max(__float2int_rn(acc), 0), 255);
    }
    const int dst_c = (convert == 2 || convert == 3 || (convert == 0 && src_c == 1)) ? 1 : 3;
    unsigned char* out = dst + (((size_t)b * dst_h + y) * dst_w + x) * dst_c;
    if (convert == 0) { for (int c = 0; c < src_c; ++c) out[c] = (unsigned char)v[c]; }
    else if (convert == 1) { out[0] = out[1] = out[2] = (unsigned char)v[0]; }
    else if (convert == 2) { out[0] = (unsigned char)((v[0] * 4899 + v[1] * 9617 + v[2] * 1868 + 8192) >> 14); }
    else if (convert == 3) { out[0] = (unsigned char)((v[2] * 4899 + v[1] * 9617 + v[0] * 1868 + 8192) >> 14); }
    else { out[0] = (unsigned char)v[2]; out[1] = (unsigned char)v[1]; out[2] = (unsigned char)v[0]; }
}
"""


def _check_driver(result: tuple[Any, ...], what: str) -> Any:
    from cuda.bindings import driver

    err, *values = result
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        raise RuntimeError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def compile_kernel(compute_capability: str) -> bytes:
    """NVRTC-compile KERNEL_SOURCE to a CUBIN for this GPU. --fmad=false: no fused multiply-add, so the sums
    round exactly like the NumPy reference."""
    from cuda.bindings import nvrtc

    def ok(result: tuple[Any, ...], what: str) -> Any:
        err, *values = result
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"{what} failed: {nvrtc.nvrtcGetErrorString(err)[1]}")
        return values[0] if len(values) == 1 else None

    prog = ok(nvrtc.nvrtcCreateProgram(KERNEL_SOURCE.encode(), b"resize_convert_u8.cu", 0, [], []), "nvrtcCreate")
    try:
        arch = f"--gpu-architecture=sm_{compute_capability.replace('.', '')}".encode()
        opts = [arch, b"--fmad=false", b"-default-device"]
        err, *_ = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = ok(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            ok(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            raise RuntimeError(f"NVRTC could not compile the resize kernel: {log.decode(errors='replace')}")
        size = ok(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        ok(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


class GpuResizer:
    """Raw frames (pinned, uploaded as uint8) -> resized, converted network input written on the device.

    `frames` is the (max_batch, frame_h, frame_w, in_channels) pinned array the pipeline fills instead of the
    backend's input buffer; `enqueue(n, dst_ptr, stream)` uploads rows [:n] and launches the kernel, all on the
    engine's stream (so it is part of the backend's CUDA graph).
    """

    def __init__(
        self,
        max_batch: int,
        frame_shape: tuple[int, int, int],
        size: tuple[int, int],
        *,
        pixel_format: str,
        color: Literal["gray", "rgb"],
        interpolation: Literal["area", "linear"],
        device: int = 0,
    ):
        from cuda.bindings import driver

        rt = cudart()
        self._driver = driver
        self.size = size
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]), int(frame_shape[2]))
        self.code = CONVERT[conversion(self.frame_shape[2], pixel_format, color)]
        ytab, xtab = tables(self.frame_shape[:2], size, interpolation)
        self._taps = (ytab.index.shape[1], xtab.index.shape[1])
        self.frames = IOBuffer("frames", (max_batch, *self.frame_shape), np.uint8)
        self._tables: list[DeviceBuffer] = []
        for host in (ytab.index, ytab.weight, xtab.index, xtab.weight):
            buf = DeviceBuffer(host.nbytes)
            self._tables.append(buf)
            check(
                rt.cudaMemcpy(buf.ptr, host.ctypes.data, host.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice),
                "cudaMemcpy(resize table)",
            )
        check(rt.cudaFree(0), "cudaFree(0)")  # make the runtime's primary context current for the driver API
        cubin = compile_kernel(device_info(device).compute_capability)
        self._module = _check_driver(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
        self._function = _check_driver(
            driver.cuModuleGetFunction(self._module, b"resize_convert_u8"), "cuModuleGetFunction"
        )

    def enqueue(self, n: int, dst_ptr: int, stream: Stream) -> None:
        self.frames.upload(n, stream)
        fh, fw, fc = self.frame_shape
        h, w = self.size
        ky, kx = self._taps
        yi, yw, xi, xw = (t.ptr for t in self._tables)
        # kernelParams: an array of pointers to each argument's value (cuda-python's documented form).
        values: list[np.ndarray] = [
            np.array([self.frames.device.ptr], np.uint64),
            *(np.array([v], np.int32) for v in (fh, fw, fc)),
            np.array([dst_ptr], np.uint64),
            *(np.array([v], np.int32) for v in (h, w)),
            np.array([yi], np.uint64),
            np.array([yw], np.uint64),
            np.array([ky], np.int32),
            np.array([xi], np.uint64),
            np.array([xw], np.uint64),
            np.array([kx], np.int32),
            np.array([self.code], np.int32),
        ]
        params = np.array([v.ctypes.data for v in values], np.uint64)  # each value array's address
        block = (32, 8, 1)
        grid = ((w + block[0] - 1) // block[0], (h + block[1] - 1) // block[1], n)
        _check_driver(
            self._driver.cuLaunchKernel(
                self._function, *grid, *block, 0, self._driver.CUstream(stream.handle), params.ctypes.data, 0
            ),
            "cuLaunchKernel(resize_convert_u8)",
        )

    def close(self) -> None:
        for buf in self._tables:
            buf.close()
        self._tables.clear()
        if self._module is not None:
            _check_driver(self._driver.cuModuleUnload(self._module), "cuModuleUnload")
            self._module = None
        self.frames.close()
