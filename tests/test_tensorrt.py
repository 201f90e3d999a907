"""TensorRT: engine build inputs, the manifest checks and refusals, Q/DQ quantization — all without a GPU —
and, where TensorRT and a CUDA GPU exist, a real build and run compared with ONNX Runtime."""

from __future__ import annotations

import io
import shlex

import numpy as np
import onnxruntime as ort
import pytest
from gpu_test_models import textured_images, tiny_recognizer, write_onnx_with_manifest

from inspector.backends.tensorrt import (
    EngineRefused,
    RuntimeDescription,
    build_command,
    engine_mismatches,
    read_engine_manifest,
    resolve_engine,
    trt_release,
)
from inspector.build import BuildError
from inspector.build.cli import main
from inspector.build.onnx_check import check_model
from inspector.build.quantize import (
    _AbsHistogram,
    activation_ranges,
    calibration_files,
    calibration_hash,
    insert_qdq,
    quantize,
)
from inspector.build.tensorrt import BuildProgress, batch_profile, engine_manifest, profile_shapes
from inspector.config import TensorRTSettings
from inspector.manifest import BatchSpec, read_manifest, write_manifest

H100 = RuntimeDescription("10.3.0.26", "NVIDIA H100 80GB HBM3", "9.0")


def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


# ------------------------------------------------------------------------------------------ profiles & commands


def test_profile_covers_every_batch_the_pipeline_forms():
    p = batch_profile(8)
    assert (p.min, p.opt, p.max) == (1, 8, 8)
    assert profile_shapes(p, (512, 512, 1)) == ((1, 512, 512, 1), (8, 512, 512, 1), (8, 512, 512, 1))
    static = BatchSpec(min=4, opt=4, max=4, dynamic=False)
    assert batch_profile(4, static).min == 4
    with pytest.raises(BuildError, match="static batch of 4"):
        batch_profile(8, static)
    with pytest.raises(BuildError):
        batch_profile(0)


def test_build_command_is_runnable_shell():
    cmd = build_command("models/rec ognizer.onnx", "/e/rec.engine", "int8", 16, "/data/calib")
    assert shlex.split(cmd) == [
        "inspector-build-engine", "models/rec ognizer.onnx", "--output", "/e/rec.engine",
        "--precision", "int8", "--batch", "16", "--calibration", "/data/calib",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------ manifest checks


def _engine_manifest(
    tmp_path, *, version="10.3.0.26", gpu="NVIDIA H100 80GB HBM3", cc="9.0", precision="fp16", batch=8
):
    onnx_path = tmp_path / "rec.onnx"
    source = write_onnx_with_manifest(onnx_path, tiny_recognizer())
    engine = tmp_path / "rec.fp16.b8.engine"
    engine.write_bytes(b"not really an engine")
    manifest = engine_manifest(
        source, engine, onnx_path=onnx_path, onnx_sha256=source.sha256, trt_version=version, gpu=gpu,
        compute_capability=cc, precision=precision, profile=batch_profile(batch), calibration_sha256=None,
        calibration_source=None, build_seconds=1.0,
    )  # fmt: skip
    write_manifest(engine, manifest)
    return engine, manifest


def test_matching_engine_has_no_mismatches(tmp_path):
    _, m = _engine_manifest(tmp_path)
    assert m.tensorrt.onnx_file.endswith("rec.onnx") and m.batch.max == 8
    assert engine_mismatches(m, H100, precision="fp16", batch=8) == []
    assert engine_mismatches(m, RuntimeDescription("10.3.0.99", H100.gpu, "9.0"), precision=None, batch=4) == []


@pytest.mark.parametrize(
    "runtime,precision,batch,expected",
    [
        (
            RuntimeDescription("10.4.0.11", H100.gpu, "9.0"),
            None,
            8,
            "built with TensorRT 10.3.0.26, this is TensorRT 10.4",
        ),
        (RuntimeDescription("10.3.0.26", "NVIDIA A100-SXM4-80GB", "8.0"), None, 8, "compute capability 9.0"),
        (RuntimeDescription("10.3.0.26", "NVIDIA H100 PCIe", "9.0"), None, 8, "per GPU model"),
        (H100, "int8", 8, "it is a fp16 engine, the config asks for int8"),
        (H100, None, 16, "batch profile ends at 8, the config's pipeline.batch_size is 16"),
    ],
)
def test_each_mismatch_is_named(tmp_path, runtime, precision, batch, expected):
    _, m = _engine_manifest(tmp_path)
    problems = engine_mismatches(m, runtime, precision=precision, batch=batch)
    assert len(problems) == 1 and expected in problems[0]


def test_trt_release_ignores_build_number():
    assert trt_release("10.3.0.26") == trt_release("10.3.0") == (10, 3, 0)
    assert trt_release("10.13.2.6") > trt_release("10.3.0")


def test_mismatched_engine_is_refused_with_the_rebuild_command(tmp_path):
    engine, m = _engine_manifest(tmp_path)
    a100 = RuntimeDescription("10.3.0.26", "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(EngineRefused) as err:
        resolve_engine(engine, m, TensorRTSettings(), 8, a100)
    message = str(err.value)
    command = build_command(tmp_path / "rec.onnx", engine, "fp16", 8)
    assert command in message and "compute capability 9.0" in message and "auto_rebuild" in message


def test_missing_engine_is_refused_with_the_build_command(tmp_path):
    with pytest.raises(EngineRefused) as err:
        read_engine_manifest(tmp_path / "seg.int8.b4.engine", TensorRTSettings(precision="int8"), 4)
    assert "does not exist" in str(err.value)
    assert build_command(tmp_path / "seg.onnx", tmp_path / "seg.int8.b4.engine", "int8", 4) in str(err.value)


def test_onnx_model_without_cached_engine_is_refused(tmp_path):
    onnx_path = tmp_path / "rec.onnx"
    source = write_onnx_with_manifest(onnx_path, tiny_recognizer())
    settings = TensorRTSettings(engine_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(EngineRefused, match="is an ONNX model") as err:
        resolve_engine(onnx_path, source, settings, 4, H100)
    assert build_command(onnx_path, tmp_path / "rec.fp16.b4.engine", "fp16", 4) in str(err.value)


def test_auto_rebuild_builds_once_into_the_cache_then_reuses_it(tmp_path):
    engine, m = _engine_manifest(tmp_path)
    a100 = RuntimeDescription("10.3.0.26", "NVIDIA A100-SXM4-80GB", "8.0")
    settings = TensorRTSettings(engine_cache_dir=str(tmp_path / "cache"), auto_rebuild=True)
    calls = []

    def fake_build(onnx_path, target, *, precision, batch, calibration, timing_cache, device):
        calls.append((onnx_path, target, precision, batch))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"engine for a100")
        from inspector.manifest import read_manifest

        built = engine_manifest(
            read_manifest(onnx_path), target, onnx_path=onnx_path, onnx_sha256="x", trt_version=a100.trt_version,
            gpu=a100.gpu, compute_capability=a100.compute_capability, precision=precision,
            profile=batch_profile(batch), calibration_sha256=None, calibration_source=None, build_seconds=1.0,
        )  # fmt: skip
        write_manifest(target, built)
        return built

    path, built = resolve_engine(engine, m, settings, 8, a100, build=fake_build)
    assert len(calls) == 1 and calls[0][0] == tmp_path / "rec.onnx" and calls[0][2:] == ("fp16", 8)
    assert path.parent == tmp_path / "cache" and "sm80" in path.name and "trt10.3.0" in path.name
    assert built.tensorrt.compute_capability == "8.0"
    again, _ = resolve_engine(engine, m, settings, 8, a100, build=fake_build)
    assert again == path and len(calls) == 1  # found in the cache, not rebuilt


@pytest.mark.skipif(_has_tensorrt(), reason="checks the refusal on a machine without TensorRT")
def test_auto_rebuild_without_tensorrt_is_refused_in_one_line(tmp_path):
    """The real default builder (a child process running inspector-build-engine) on a box without TensorRT."""
    onnx_path = tmp_path / "rec.onnx"
    write_onnx_with_manifest(onnx_path, tiny_recognizer())
    m = read_manifest(onnx_path)
    settings = TensorRTSettings(engine_cache_dir=str(tmp_path / "cache"), auto_rebuild=True)
    with pytest.raises(EngineRefused) as info:
        resolve_engine(onnx_path, m, settings, 4, H100)
    message = str(info.value)
    assert "could not build" in message and "inspector-build-engine" in message
    assert "needs TensorRT's builder" in message and "Traceback" not in message
    assert message.count("\n") == 0


def test_builder_cli_refuses_bad_input_clearly(tmp_path, capsys):
    onnx_path = tmp_path / "rec.onnx"
    write_onnx_with_manifest(onnx_path, tiny_recognizer())
    assert main([str(onnx_path), "--precision", "int8", "--batch", "4"]) == 1
    assert "needs --calibration" in capsys.readouterr().err
    assert main([str(tmp_path / "absent.onnx")]) == 1
    assert "model file not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ progress display


def test_progress_display_in_a_log():
    out = io.StringIO()
    p = BuildProgress(out, tty=False)
    p.start("Building engine", None, 3)
    p.start("Tactic timing", "Building engine", 10)
    for i in range(10):
        assert p.step("Tactic timing", i)
    p.finish("Tactic timing")
    p.finish("Building engine")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[build] Building engine (3 steps)"
    assert lines[1] == "[build]   Tactic timing (10 steps)"
    assert lines[2].startswith("[build]   Tactic timing done in")
    assert lines[3].startswith("[build] Building engine done in")
    p.cancelled = True
    assert p.step("Building engine", 1) is False  # asks TensorRT to stop


def test_progress_display_on_a_terminal_rewrites_one_line():
    out = io.StringIO()
    p = BuildProgress(out, tty=True)
    p.start("Build", None, 2)
    p.step("Build", 0)
    assert out.getvalue().endswith("\r\x1b[2K[build] Build 1/2")
    p.finish("Build")
    assert out.getvalue().endswith("\n")


# ------------------------------------------------------------------------------------------ INT8 via Q/DQ


def test_histogram_percentile_survives_a_growing_range():
    rng = np.random.default_rng(0)
    h = _AbsHistogram()
    data = [rng.standard_normal(20000) * s for s in (0.5, 1.0, 2.0)]
    for d in data:
        h.add(d)
    exact = np.percentile(np.abs(np.concatenate(data)), 99.0)
    assert abs(h.percentile(99.0) - exact) / exact < 0.03


def test_calibration_set_is_deterministic_and_hashed(tmp_path):
    import cv2

    for i in range(10):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((8, 8), i * 20, np.uint8))
    files = calibration_files(tmp_path, 4)
    assert [f.name for f in files] == ["00.png", "03.png", "06.png", "09.png"]
    h1 = calibration_hash(tmp_path, files, "percentile:4")
    assert h1 == calibration_hash(tmp_path, calibration_files(tmp_path, 4), "percentile:4")
    cv2.imwrite(str(tmp_path / "03.png"), np.zeros((8, 8), np.uint8))
    assert calibration_hash(tmp_path, files, "percentile:4") != h1
    with pytest.raises(BuildError, match="no calibration images"):
        calibration_files(tmp_path / "empty", 4) if (tmp_path / "empty").mkdir() is None else None


def _run(model, images):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0]


def test_qdq_model_agrees_with_the_float_model_in_onnxruntime():
    model = tiny_recognizer()
    calibration, held_out = textured_images(32, seed=1), textured_images(16, seed=2)
    q = quantize(model, calibration)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == 5  # the inputs of c1..c5 (the head conv stays float)
    assert ops.count("DequantizeLinear") == 5 + 5  # those activations + the per-channel weights of c1..c5
    assert check_model(q).ok, check_model(q).format()  # still parses in TensorRT: zero points 0, types fine
    ref, out = _run(model, held_out), _run(q, held_out)
    diff = np.abs(ref - out)
    assert diff.mean() < 0.02 and diff.max() < 0.15, (diff.mean(), diff.max())
    # Same decisions at a mid threshold on almost every block.
    assert ((ref > 0.5) == (out > 0.5)).mean() > 0.97


def test_qdq_numerics_would_catch_wrong_scales():
    """The agreement test above can fail: activation ranges 20x too small clip everything."""
    model = tiny_recognizer()
    calibration, held_out = textured_images(16, seed=1), textured_images(16, seed=2)
    from inspector.build.quantize import _quantizable_nodes

    tensors = sorted({n.input[0] for n in _quantizable_nodes(model, False)})
    ranges = activation_ranges(model, calibration, tensors, method="max")
    good = np.abs(_run(model, held_out) - _run(insert_qdq(model, ranges), held_out)).mean()
    bad = np.abs(
        _run(model, held_out) - _run(insert_qdq(model, {k: v / 20 for k, v in ranges.items()}), held_out)
    ).mean()
    assert bad > 3 * good


def test_head_convolution_stays_float():
    q = quantize(tiny_recognizer(), textured_images(8))
    head = next(n for n in q.graph.node if n.name == "head")
    assert head.input[1] == "head_w" and not head.input[0].endswith("_dq")
    qh = quantize(tiny_recognizer(), textured_images(8), quantize_heads=True)
    assert next(n for n in qh.graph.node if n.name == "head").input[1].endswith("_dq")


# ------------------------------------------------------------------------------------------ on a GPU with TensorRT


def _need_tensorrt_gpu():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'inspector[gpu]')")
    from inspector.backends.gpu_memory import gpu_available

    ok, why = gpu_available(0)
    if not ok:
        pytest.skip(f"no usable CUDA GPU: {why}")
    return trt


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize(
    "precision,mean_tol,max_tol", [("fp32", 1e-4, 1e-3), ("fp16", 2e-3, 1e-2), ("int8", 0.02, 0.15)]
)
def test_engine_build_and_run_agree_with_onnxruntime(tmp_path, precision, mean_tol, max_tol):
    import cv2

    _need_tensorrt_gpu()
    from inspector.backends.tensorrt import TensorRTBackend
    from inspector.build.tensorrt import build_engine

    onnx_path = tmp_path / "rec.onnx"
    write_onnx_with_manifest(onnx_path, tiny_recognizer())
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(textured_images(32, seed=1)):
        cv2.imwrite(str(calib / f"{i:03d}.png"), img[:, :, 0])
    engine = tmp_path / f"rec.{precision}.engine"
    cache = tmp_path / "timing.cache"
    manifest = build_engine(onnx_path, engine, precision=precision, batch=4, calibration=calib, timing_cache=cache)
    assert cache.is_file() and manifest.tensorrt.precision == precision
    assert (manifest.tensorrt.calibration_sha256 is not None) == (precision == "int8")
    images = textured_images(4, seed=3)
    reference = _run(tiny_recognizer(), images)
    backend = TensorRTBackend(engine, manifest, TensorRTSettings(precision=precision), 4)
    try:
        for n in (4, 1, 3, 4):  # every batch size in the profile, graphs captured and replayed
            backend.input_buffer()[:n] = images[:n]
            out = backend.run(n)["block_scores"]
            assert out.shape == reference[:n].shape
            diff = np.abs(out - reference[:n])
            assert diff.mean() < mean_tol and diff.max() < max_tol, (precision, n, diff.mean(), diff.max())
    finally:
        backend.close()
