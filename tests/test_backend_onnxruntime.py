import numpy as np
import onnxruntime as ort
import pytest

from inspector.backends import BackendError, backend_class
from inspector.backends.onnxruntime import OnnxRuntimeBackend
from inspector.config import OnnxRuntimeSettings
from inspector.manifest import ModelManifest, read_manifest
from tests.tiny_models import write_tiny_models

SETTINGS = OnnxRuntimeSettings(intra_op_threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return write_tiny_models(folder, poison=1)


def _frame(bright_at=None):
    frame = np.full((64, 64, 1), 100, np.uint8)
    if bright_at is not None:
        y, x = bright_at
        frame[y : y + 3, x : x + 3] = 250
    return frame


def test_recognizer_scores_the_block_that_holds_the_spot_and_matches_a_plain_session_run(tiny):
    rec, _ = tiny
    backend = OnnxRuntimeBackend(rec, read_manifest(rec), SETTINGS, max_batch=4)
    assert backend_class("onnxruntime") is OnnxRuntimeBackend
    batch = backend.input_buffer()
    batch[0] = _frame()
    batch[1] = _frame((40, 5))  # block row 1, column 0
    batch[2] = _frame((2, 60))  # block row 0, column 1
    out = backend.run(3)["block_scores"]
    assert out.shape == (3, 2, 2)
    assert out[0].max() < 0.01
    assert out[1, 1, 0] > 0.99 and np.delete(out[1].ravel(), 2).max() < 0.01
    assert out[2, 0, 1] > 0.99
    reference = ort.InferenceSession(str(rec), providers=["CPUExecutionProvider"]).run(
        None, {"image": batch[:3].copy()}
    )[0]
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)


def test_outputs_are_preallocated_and_reused_across_calls(tiny):
    _, seg = tiny
    backend = OnnxRuntimeBackend(seg, read_manifest(seg), SETTINGS, max_batch=2)
    backend.input_buffer()[0] = _frame((10, 10))
    first = backend.run(1)["pixel_scores"]
    backend.input_buffer()[0] = _frame()
    second = backend.run(1)["pixel_scores"]
    assert first is second  # the same preallocated view, refilled in place
    assert second[0, 1].max() < 0.01  # the second frame has no spot: the buffer holds the new result
    np.testing.assert_allclose(second.sum(axis=1), 1.0, atol=1e-5)


def test_a_runtime_failure_raises_and_the_backend_keeps_working(tiny, capfd):
    rec, _ = tiny
    backend = OnnxRuntimeBackend(rec, read_manifest(rec), SETTINGS, max_batch=2)
    poisoned = _frame()
    poisoned[0, 0] = 1  # the tiny model's fault trigger
    backend.input_buffer()[0] = poisoned
    capfd.readouterr()
    with pytest.raises(Exception, match=r"(?i)shape"):
        backend.run(1)
    # The exception carries ORT's message to the daemon's rate-limited log; ORT's own per-failure line on
    # stderr (~600 bytes a batch, unthrottled) would flood the journal when an engine fails on every batch.
    assert capfd.readouterr().err == ""
    backend.input_buffer()[0] = _frame((40, 40))
    assert backend.run(1)["block_scores"][0, 1, 1] > 0.99


def _edited(manifest: ModelManifest, **update) -> ModelManifest:
    return ModelManifest.model_validate({**manifest.model_dump(), **update})


def test_a_graph_that_disagrees_with_its_manifest_is_refused(tiny):
    rec, _ = tiny
    manifest = read_manifest(rec)
    wrong_size = _edited(manifest, input={**manifest.input.model_dump(), "height": 96, "width": 96})
    with pytest.raises(BackendError, match="input shape"):
        OnnxRuntimeBackend(rec, wrong_size, SETTINGS, 1)
    wrong_output = _edited(
        manifest,
        outputs=[
            {"name": "block_scores", "shape": ["N", 2, 2], "meaning": "x"},
            {"name": "extra", "shape": ["N"], "meaning": "y"},
        ],
    )
    with pytest.raises(BackendError, match="'extra' is not in the graph"):
        OnnxRuntimeBackend(rec, wrong_output, SETTINGS, 1)
    wrong_grid = _edited(manifest, outputs=[{"name": "block_scores", "shape": ["N", 3, 3], "meaning": "x"}])
    with pytest.raises(BackendError, match="differs from the manifest"):
        OnnxRuntimeBackend(rec, wrong_grid, SETTINGS, 1)
    with pytest.raises(BackendError, match="exceeds the model's largest batch"):
        OnnxRuntimeBackend(rec, manifest, SETTINGS, manifest.batch.max + 1)


def test_a_file_that_is_not_onnx_is_refused_clearly(tmp_path, tiny):
    rec, _ = tiny
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"this is not a model")
    with pytest.raises(BackendError, match="cannot load"):
        OnnxRuntimeBackend(bogus, read_manifest(rec), SETTINGS, 1)
