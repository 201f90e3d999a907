"""Shared GPU machinery (buffers, streams, errors), the GPU resize's arithmetic, and the CUDA backend.

CPU-checkable parts run everywhere: CUDA errors become clear BackendErrors, the resize tables and reference
match OpenCV / inspector.preprocess, the backends' import is lazy. The rest needs a CUDA GPU (and
onnxruntime-gpu for the CUDA backend) and skips with the reason otherwise.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gpu_test_models import textured_images, tiny_recognizer, write_onnx_with_manifest

from inspector.backends import BackendError
from inspector.backends.gpu_preprocess import area_table, conversion, linear_table, resize_reference
from inspector.preprocess import resize_image


def test_backend_modules_import_without_cuda_or_tensorrt():
    code = (
        "import sys\n"
        "import inspector.backends.tensorrt, inspector.backends.cuda, inspector.build.tensorrt, inspector.build.cli\n"
        "import inspector.backends.gpu_memory, inspector.backends.gpu_preprocess, inspector.backends.gpu_io\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'torch') or m.startswith('cuda.bindings')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _gpu() -> tuple[bool, str]:
    from inspector.backends.gpu_memory import gpu_available

    return gpu_available(0)


@pytest.mark.skipif(_gpu()[0], reason="this checks the no-GPU path")
def test_without_a_gpu_cuda_errors_are_clear_backend_errors():
    pytest.importorskip("cuda.bindings", reason="cuda-python not installed")
    from inspector.backends.gpu_memory import CudaError, Stream

    ok, why = _gpu()
    assert not ok and "cudaGetDeviceCount" in why
    with pytest.raises(CudaError, match=r"cudaStreamCreateWithFlags failed: cudaError\w+: "):
        Stream()
    assert issubclass(CudaError, BackendError)


# ------------------------------------------------------------------------------------------ resize arithmetic


def test_area_table_rows_are_normalised_box_filters():
    for src, dst in [(2048, 512), (1000, 256), (2448, 640), (640, 640), (5, 3)]:
        t = area_table(src, dst)
        assert np.allclose(t.weight.sum(axis=1), 1.0, atol=1e-5)
        assert t.index.min() >= 0 and t.index.max() < src
    assert area_table(8, 2).weight.tolist() == [[0.25] * 4] * 2
    with pytest.raises(ValueError, match="shrinks only"):
        area_table(100, 200)
    t = linear_table(10, 4)
    assert np.allclose(t.weight.sum(axis=1), 1.0)


CASES = [
    ((1024, 1280, 1), "mono8", "gray", (256, 320)),
    ((1000, 1300, 1), "mono8", "gray", (256, 320)),  # non-integer scale
    ((600, 800, 3), "bgr8", "rgb", (224, 320)),
    ((600, 800, 3), "rgb8", "gray", (224, 320)),
    ((600, 800, 3), "bgr8", "gray", (224, 320)),
    ((700, 900, 1), "mono8", "rgb", (256, 256)),
]


@pytest.mark.parametrize("shape,fmt,color,size", CASES)
def test_gpu_resize_reference_matches_the_cpu_preprocessing(shape, fmt, color, size):
    """Area resize: what the kernel computes equals inspector.preprocess (OpenCV) within one grey level, on
    at most 1% of pixels; the conversions are OpenCV's fixed-point ones, bit for bit."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    ours = resize_reference(frame, size, pixel_format=fmt, color=color, interpolation="area")
    cpu = resize_image(frame, size, pixel_format=fmt, color=color, interpolation="area")
    assert ours.shape == cpu.shape
    diff = np.abs(ours.astype(int) - cpu.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_linear_resize_reference_is_within_one_grey_level():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (480, 640, 1), dtype=np.uint8)
    ours = resize_reference(frame, (224, 224), interpolation="linear")
    cpu = resize_image(frame, (224, 224), interpolation="linear")
    assert np.abs(ours.astype(int) - cpu.astype(int)).max() <= 1  # OpenCV uses 11-bit fixed-point weights


def test_conversion_names_follow_the_preprocessor():
    assert conversion(1, "mono8", "gray") == "none"
    assert conversion(1, "mono8", "rgb") == "gray2rgb"
    assert conversion(3, "bgr8", "rgb") == "bgr2rgb"
    assert conversion(3, "rgb8", "rgb") == "none"
    assert conversion(3, "rgb8", "gray") == "rgb2gray"


# ------------------------------------------------------------------------------------------ on a GPU


def _need_gpu():
    pytest.importorskip("cuda.bindings", reason="cuda-python not installed")
    ok, why = _gpu()
    if not ok:
        pytest.skip(f"no usable CUDA GPU: {why}")


@pytest.mark.gpu
def test_pinned_round_trip_and_graph_replay():
    _need_gpu()
    from inspector.backends.gpu_memory import CudaGraphs, IOBuffer, Stream, check, cudart, device_info

    info = device_info(0)
    assert info.name and "." in info.compute_capability
    stream = Stream()
    a = IOBuffer("a", (4, 64, 64, 3), np.uint8)
    b = IOBuffer("b", (4, 64, 64, 3), np.uint8)
    rt = cudart()

    def enqueue(n):
        a.upload(n, stream)
        check(
            rt.cudaMemcpyAsync(b.device.ptr, a.device.ptr, n * a.row_bytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                               stream.stream),
            "d2d",
        )  # fmt: skip
        b.download(n, stream)

    graphs = CudaGraphs(stream, enqueue, pytest.fail)
    try:
        for n, value in [(2, 7), (4, 9), (2, 11)]:
            a.array[:] = value
            b.array[:] = 0
            graphs.launch(n)
            stream.synchronize()
            assert (b.array[:n] == value).all() and (b.array[n:] == 0).all()
        assert graphs.enabled and len(graphs._execs) == 2
    finally:
        graphs.close()
        a.close()
        b.close()
        stream.close()


@pytest.mark.gpu
@pytest.mark.parametrize("shape,fmt,color,size", CASES)
def test_gpu_resize_kernel_equals_its_reference(shape, fmt, color, size):
    _need_gpu()
    from inspector.backends.gpu_memory import DeviceBuffer, PinnedArray, Stream, check, cudart
    from inspector.backends.gpu_preprocess import GpuResizer

    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, *shape), dtype=np.uint8)
    stream = Stream()
    resizer = GpuResizer(2, shape, size, pixel_format=fmt, color=color, interpolation="area")
    channels = 1 if color == "gray" else 3
    out = PinnedArray((2, *size, channels), np.uint8)
    dst = DeviceBuffer(out.nbytes)
    try:
        resizer.frames.array[:] = frames
        resizer.enqueue(2, dst.ptr, stream)
        rt = cudart()
        check(rt.cudaMemcpyAsync(out.ptr, dst.ptr, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                 stream.stream), "d2h")  # fmt: skip
        stream.synchronize()
        for i in range(2):
            ref = resize_reference(frames[i], size, pixel_format=fmt, color=color, interpolation="area")
            diff = np.abs(out.array[i].astype(int) - ref.astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    finally:
        dst.close()
        out.close()
        resizer.close()
        stream.close()


@pytest.mark.gpu
def test_cuda_backend_agrees_with_onnxruntime_cpu(tmp_path):
    _need_gpu()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    from inspector.backends.cuda import CudaBackend
    from inspector.config import TensorRTSettings

    path = tmp_path / "rec.onnx"
    manifest = write_onnx_with_manifest(path, tiny_recognizer())
    images = textured_images(4, seed=3)
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
    for graphs in (True, False):
        backend = CudaBackend(path, manifest, TensorRTSettings(cuda_graphs=graphs), 4)
        try:
            for n in (4, 1, 3, 4):
                backend.input_buffer()[:n] = images[:n]
                out = backend.run(n)["block_scores"]
                diff = np.abs(out - cpu[:n])
                assert diff.mean() < 2e-3 and diff.max() < 1e-2, (graphs, n, diff.max())
            # GPU resize path: raw 4x frames in, the same scores out (within the resize's 1 grey level).
            raw = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
            frames = backend.enable_gpu_resize(raw.shape[1:], "mono8", "area")
            frames[:4] = raw
            out = backend.run(4)["block_scores"]
            assert np.abs(out - cpu).max() < 1e-2
        finally:
            backend.close()
