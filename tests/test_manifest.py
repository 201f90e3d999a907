import json

import pytest

from inspector.manifest import (
    ManifestError,
    ModelManifest,
    check_expectations,
    manifest_path,
    read_manifest,
    sha256_file,
    write_manifest,
)


def _manifest(model_file, **over):
    base = dict(
        task="segmenter",
        format="onnx",
        file=model_file.name,
        sha256=sha256_file(model_file),
        architecture="test",
        input={"height": 64, "width": 96, "channels": 1},
        outputs=[{"name": "pixel_scores", "shape": ["N", 3, 64, 96], "meaning": "probabilities"}],
        preprocessing={"color": "gray", "mean": [0.5], "std": [0.25]},
        classes=["background", "crack", "pit"],
    )
    base.update(over)
    return ModelManifest.model_validate(base)


@pytest.fixture
def model_file(tmp_path):
    f = tmp_path / "seg.onnx"
    f.write_bytes(b"not really onnx, but hashed")
    return f


def test_round_trip_and_hash_check(model_file):
    write_manifest(model_file, _manifest(model_file))
    m = read_manifest(model_file)
    assert m.defect_classes == ["crack", "pit"]
    model_file.write_bytes(b"replaced")
    with pytest.raises(ManifestError, match="does not match its manifest"):
        read_manifest(model_file)


def test_missing_manifest_and_missing_model_are_explained(model_file, tmp_path):
    with pytest.raises(ManifestError, match="no manifest beside"):
        read_manifest(model_file)
    with pytest.raises(ManifestError, match="model file not found"):
        read_manifest(tmp_path / "absent.onnx")


def test_manifest_for_another_file_is_refused(model_file):
    write_manifest(model_file, _manifest(model_file, file="other.onnx"))
    with pytest.raises(ManifestError, match=r"describes 'other\.onnx'"):
        read_manifest(model_file)


def test_invalid_manifest_content_is_refused(model_file):
    manifest_path(model_file).write_text(json.dumps({"task": "recognizer"}))
    with pytest.raises(ManifestError, match="invalid manifest"):
        read_manifest(model_file)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"classes": ["crack", "background"]}, "start with 'background'"),
        ({"input": {"height": 50, "width": 96, "channels": 1}}, "multiple of 32"),
        ({"task": "recognizer"}, "block_scores"),
        ({"format": "tensorrt"}, "tensorrt info"),
    ],
)
def test_inconsistent_manifests_are_refused(model_file, over, message):
    with pytest.raises(ValueError, match=message):
        _manifest(model_file, **over)


def test_config_expectations(model_file):
    m = _manifest(model_file)
    check_expectations(m, task="segmenter", expect_classes=["background", "crack", "pit"], expect_input=(64, 96))
    with pytest.raises(ManifestError, match="uses it as the recognizer"):
        check_expectations(m, task="recognizer")
    with pytest.raises(ManifestError, match="classes"):
        check_expectations(m, task="segmenter", expect_classes=["background", "crack"])
    with pytest.raises(ManifestError, match="input is 64x96"):
        check_expectations(m, task="segmenter", expect_input=(224, 224))
