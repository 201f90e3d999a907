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


def _written(model_file, text: str | bytes) -> None:
    path = manifest_path(model_file)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 5000 + "]" * 5000, "invalid manifest"),
        (b"\xff\xfe" + bytes(range(256)), "invalid manifest"),
        ('{"task": "recognizer", "input": {"height": ' + "9" * 5000 + "}}", "invalid manifest"),
        (" " * ((1 << 20) + 1), "larger than 1024 KiB"),
    ],
    ids=["nested-5000-deep", "binary", "huge-integer", "over-1-MiB"],
)
def test_a_hostile_manifest_is_a_manifest_error(model_file, content, message):
    """A manifest is read by start-up, check-config and every reload: nothing in it may raise past read_manifest."""
    _written(model_file, content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(model_file)


@pytest.mark.parametrize(
    "over",
    [
        {"preprocessing": {"color": "gray", "mean": [float("nan")], "std": [0.25]}},
        {"input": {"height": 1 << 40, "width": 96, "channels": 1}},
        {"batch": {"min": 1, "opt": 1, "max": 10**12}},
    ],
    ids=["nan-mean", "input-2^40", "batch-10^12"],
)
def test_numbers_a_manifest_cannot_mean_are_refused(model_file, over):
    data = json.loads(_manifest(model_file).model_dump_json())
    data.update(over)
    _written(model_file, json.dumps(data))
    with pytest.raises(ManifestError, match="invalid manifest"):
        read_manifest(model_file)


def test_an_unreadable_manifest_is_a_manifest_error(model_file):
    manifest_path(model_file).mkdir()  # a directory where the file should be: open() fails
    with pytest.raises(ManifestError, match="manifest"):
        read_manifest(model_file)
