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


@pytest.mark.parametrize(
    ("frame_size", "scale", "pixel_format", "color"),
    [
        ((200, 150), 1.0, "mono8", "gray"),  # native resolution: no resize, zero border
        ((400, 300), 0.5, "mono8", "gray"),  # shrunk (area)
        ((100, 80), 1.7, "mono8", "gray"),  # enlarged (linear)
        ((500, 500), 1.0, "mono8", "gray"),  # too large at its scale: shrunk further to fit
        ((200, 150), 1.0, "rgb8", "gray"),  # with a channel conversion
        ((180, 120), 0.8, "mono8", "rgb"),
        ((180, 120), 1.0, "bgr8", "rgb"),
    ],
)
@pytest.mark.parametrize("pad", ["zero", "reflect"])
def test_placed_input_is_bit_identical_to_training(frame_size, scale, pixel_format, color, pad):
    """fit place in the daemon's Preprocessor == place_image, which training and evaluation use."""
    from inspector.preprocess import place_image

    rng = np.random.default_rng(7)
    channels = 1 if pixel_format == "mono8" else 3
    frame = rng.integers(0, 256, (*frame_size, channels), dtype=np.uint8)
    pre = Preprocessor(3, (224, 192), color, pixel_format, fit="place", scale=scale, pad=pad)
    pre.buffer[1] = 99  # whatever the row held before must not survive outside the placed frame
    row = pre.put(1, frame)
    expected, placed = place_image(frame, scale, (224, 192), pixel_format=pixel_format, color=color, pad=pad)
    assert np.array_equal(row, expected)
    assert pre.placed(frame_size) == placed
    if pad == "zero":
        assert np.all(row[placed[0] :] == 0) and np.all(row[:, placed[1] :] == 0)
    assert np.array_equal(
        pre.put(0, frame[: frame_size[0] // 2]),
        place_image(frame[: frame_size[0] // 2], scale, (224, 192), pixel_format=pixel_format, color=color, pad=pad)[0],
    )


@pytest.mark.parametrize("pad", ["zero", "reflect"])
def test_a_frame_smaller_than_its_slot_is_placed_from_the_slot_in_place(pad):
    """The daemon passes a view of the frame inside a larger ring slot (not contiguous): same input as training's."""
    from inspector.preprocess import place_image

    slot = np.random.default_rng(1).integers(0, 256, (300, 300, 1), dtype=np.uint8)
    view = slot[:150, :120]
    pre = Preprocessor(2, (224, 192), "gray", "mono8", fit="place", scale=1.0, pad=pad)
    expected, _ = place_image(np.ascontiguousarray(view), 1.0, (224, 192), pad=pad)
    assert np.array_equal(pre.put(1, view), expected)
