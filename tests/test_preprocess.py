import numpy as np
import pytest

from inspector.preprocess import Preprocessor, resize_image


@pytest.mark.parametrize(
    ("pixel_format", "color", "in_channels"),
    [("mono8", "gray", 1), ("mono8", "rgb", 1), ("rgb8", "rgb", 3), ("rgb8", "gray", 3), ("bgr8", "rgb", 3)],
)
def test_daemon_preprocessor_equals_the_training_function(pixel_format, color, in_channels):
    """Training (resize_image) and the daemon (Preprocessor, in place) must produce identical inputs."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (300, 410, in_channels), dtype=np.uint8)
    pre = Preprocessor(batch=3, size=(224, 192), color=color, pixel_format=pixel_format)
    row = pre.put(2, frame)
    expected = resize_image(frame, (224, 192), pixel_format=pixel_format, color=color)
    assert row.shape == expected.shape == (224, 192, 1 if color == "gray" else 3)
    np.testing.assert_array_equal(row, expected)
    assert np.shares_memory(row, pre.buffer)
    assert not pre.buffer[:2].any()  # other rows untouched


def test_bgr_frames_reach_the_network_as_rgb():
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    out = resize_image(frame, (32, 32), pixel_format="bgr8", color="rgb")
    assert out[..., 2].min() == 255 and out[..., 0].max() == 0
