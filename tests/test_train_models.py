"""Network shapes, receptive field, the segmenter's crop path, and the export wrapper."""

from __future__ import annotations

import pytest
import torch

from inspector.train.models import (
    Deployed,
    build_classifier,
    build_deeplabv3plus,
    build_model,
    build_recognizer,
    build_segmenter,
    mean_std,
    normalize_batch,
    receptive_field,
)

torch.set_num_threads(1)  # 2 threads on a shared 2-core box are slower (measured 8x)


@pytest.mark.parametrize("size", [(224, 224), (320, 320), (224, 320)])
def test_recognizer_block_grid(size):
    model = build_recognizer("resnet-tiny", 1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 2, size[0] // 32, size[1] // 32)


@pytest.mark.parametrize("size", [224, 320])
def test_resnet50_recognizer_is_fully_convolutional(size):
    model = build_recognizer("resnet50", 3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 2, size // 32, size // 32)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())  # the FC layer became a 1x1 conv


@pytest.mark.parametrize("size", [224, 320])
def test_segmentation_and_classifier_shapes(size):
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        assert build_segmenter("resnet-tiny", 1, 4).eval()(x).shape == (2, 4, size, size)
        assert build_deeplabv3plus("resnet-tiny", 1, 4).eval()(x).shape == (2, 4, size, size)
        assert build_classifier("resnet-tiny", 1).eval()(x).shape == (2, 2)


def test_resnet50_segmenter_uses_dilation_and_full_resolution():
    model = build_segmenter("resnet50", 1, 3).eval()
    assert model.trunk.strides[4] == 16  # layer4 dilated, not strided
    assert sum(1 for _ in model.branch.stage) == 3  # a ResNet-50 first stage: 3 bottlenecks
    with torch.no_grad():
        assert model(torch.randn(1, 1, 224, 224)).shape == (1, 3, 224, 224)


def _gradient_extent(model: torch.nn.Module, size: int, in_channels: int, cell: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the input that influence one output cell (non-zero gradient)."""
    x = torch.randn(1, in_channels, size, size, requires_grad=True)
    out = model(x)
    out[0, 1, cell[0], cell[1]].backward()
    touched = x.grad[0].abs().sum(0) > 0
    rows = torch.nonzero(touched.any(1)).flatten()
    cols = torch.nonzero(touched.any(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_receptive_field_matches_the_gradient():
    assert receptive_field("resnet50") == 427
    assert receptive_field("resnet18") == 435
    assert receptive_field("resnet-tiny") == 195
    model = build_recognizer("resnet-tiny", 1).eval()
    # 512 input: the centre cell's field (195 px) lies inside the image, so the gradient shows its full extent.
    height, width = _gradient_extent(model, 512, 1, (8, 8))
    assert height == width == 195


def test_resnet50_blocks_see_the_whole_224_image():
    """On 224x224, a block's receptive field (427 px, cell i spanning [32i - 213, 32i + 213]) covers the image:
    wholly for blocks 1..6, all but the last 10 px for block 0 (models.py's docstring)."""
    model = build_recognizer("resnet50", 1).eval()
    assert _gradient_extent(model, 224, 1, (3, 1)) == (224, 224)
    assert _gradient_extent(model, 224, 1, (0, 0)) == (214, 214)


def test_segmenter_crop_path_aligns_with_the_full_forward():
    """Inside a crop (away from its border band) the crop path computes what the full forward computes."""
    torch.manual_seed(0)
    model = build_segmenter("resnet-tiny", 1, 3).eval()
    x = torch.randn(2, 1, 192, 256)
    boxes = [(32, 64, 128, 128), (64, 0, 128, 128)]  # the second touches the image's left edge
    crops = torch.stack([x[i, :, t : t + h, c : c + w] for i, (t, c, h, w) in enumerate(boxes)])
    with torch.no_grad():
        full = model(x)
        cropped = model(x, crops, boxes)
    assert cropped.shape == (2, 3, 128, 128)
    for i, (t, c, h, w) in enumerate(boxes):
        ref = full[i, :, t : t + h, c : c + w]
        margin = 24  # the branch's half receptive field plus the 1/2-resolution decoder convolutions
        inner = (slice(None), slice(margin, h - margin), slice(margin, w - margin))
        torch.testing.assert_close(cropped[i][inner], ref[inner], atol=1e-4, rtol=1e-4)
    # the band near the crop's border does see zero padding instead of image: not equal everywhere
    assert not torch.allclose(cropped[0], full[0, :, 32:160, 64:192], atol=1e-4)


def test_segmenter_crop_path_trains():
    model = build_segmenter("resnet-tiny", 1, 2).train()
    x = torch.randn(2, 1, 128, 128)
    boxes = [(0, 0, 64, 64), (64, 32, 64, 64)]
    crops = torch.stack([x[i, :, t : t + h, c : c + w] for i, (t, c, h, w) in enumerate(boxes)])
    out = model(x, crops, boxes)
    out.mean().backward()
    assert model.trunk.stem[0].weight.grad.abs().sum() > 0  # the backbone saw the whole image
    assert model.branch.stem[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiples of 4"):
        model(x, crops, [(1, 0, 64, 64), (0, 0, 64, 64)])


def test_the_segmenters_window_head_sees_the_whole_window_and_leaves_the_crop_output_alone():
    torch.manual_seed(0)
    plain = build_segmenter("resnet-tiny", 1, 3).eval()
    model = build_segmenter("resnet-tiny", 1, 3, aux=True).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert {k.split(".")[0] for k in missing} == {"window_head"} and not unexpected
    x = torch.randn(2, 1, 128, 160)
    boxes = [(0, 0, 64, 64), (64, 96, 64, 64)]
    crops = torch.stack([x[i, :, t : t + h, c : c + w] for i, (t, c, h, w) in enumerate(boxes)])
    with torch.no_grad():
        logits, window = model.forward_train(x, crops, boxes)
        # The head is extra: what the crop path and the exported forward compute does not change.
        torch.testing.assert_close(logits, plain(x, crops, boxes))
        torch.testing.assert_close(model(x), plain(x))
    assert window is not None and window.shape == (2, 3, 128, 160)
    # A loss on the window outside both crops reaches the backbone; without the head it could not.
    model.train()
    _, window = model.forward_train(x, crops, boxes)
    window[1, :, :, :64].sum().backward()
    assert model.trunk.stem[0].weight.grad.abs().sum() > 0 and model.window_head.weight.grad.abs().sum() > 0
    assert model.branch.stem[0].weight.grad is None or model.branch.stem[0].weight.grad.abs().sum() == 0
    assert plain.forward_train(x, crops, boxes)[1] is None


@pytest.mark.parametrize("task", ["recognizer", "segmenter", "classifier", "deeplabv3plus"])
def test_deployed_takes_uint8_nhwc_and_returns_probabilities(task):
    in_channels = 1
    model = build_model(task, "resnet-tiny", in_channels, num_classes=3).eval()
    mean, std = mean_std(in_channels)
    deployed = Deployed(model, task, mean, std).eval()
    frames = torch.randint(0, 256, (2, 96, 128, in_channels), dtype=torch.uint8)
    with torch.no_grad():
        out = deployed(frames)
        logits = model(normalize_batch(frames, mean, std))
    if task == "recognizer":
        assert out.shape == (2, 3, 4)
        torch.testing.assert_close(out, torch.softmax(logits, 1)[:, 1])
    elif task == "classifier":
        assert out.shape == (2, 1, 1)
    else:
        assert out.shape == (2, 3, 96, 128)
        torch.testing.assert_close(out.sum(1), torch.ones(2, 96, 128))
    assert out.min() >= 0 and out.max() <= 1


def test_normalisation_is_the_preprocess_constants():
    frames = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    mean, std = mean_std(3)
    x = normalize_batch(frames, mean, std)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(mean, std, strict=True)]))


def test_tiny_models_are_small():
    for task in ("recognizer", "segmenter"):
        params = sum(p.numel() for p in build_model(task, "resnet-tiny", 1, 3).parameters())
        assert params * 4 < 2.5e6, f"{task}: {params} parameters"


def test_per_image_standardisation_ignores_lighting_and_keeps_the_border():
    from inspector.train.models import ImageStandardize

    mean, std = mean_std(1)
    std_layer = ImageStandardize(mean, std)
    frames = torch.randint(1, 150, (2, 64, 96, 1), dtype=torch.uint8)  # 1.2 x + 30 stays below 255: no clipping
    frames[:, 40:] = 0  # zero border below the frame, as place_image writes it
    brighter = (frames.float() * 1.2 + 30).clamp(1, 255).to(torch.uint8) * (frames > 0)
    a = std_layer(normalize_batch(frames, mean, std))
    b = std_layer(normalize_batch(brighter, mean, std))
    assert a[:, :, 40:].abs().max() == 0  # the border stays 0
    frame = a[:, :, :40]
    assert frame.mean().abs() < 1e-4 and (frame.std() - 1).abs() < 0.05
    torch.testing.assert_close(a, b, atol=0.05, rtol=0)  # brightness and contrast are gone (uint8 rounding left)


@pytest.mark.parametrize("task", ["recognizer", "segmenter"])
def test_standardised_models_export_for_tensorrt(task, tmp_path):
    """The standardisation is part of the graph: ONNX Runtime agrees with PyTorch, TensorRT's op table accepts it."""
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from inspector.train.export import OPSET, to_onnx

    model = build_model(task, "resnet-tiny", 1, 3, standardize=True).eval()
    deployed = Deployed(model, task, *mean_std(1)).eval()
    out = "block_scores" if task == "recognizer" else "pixel_scores"
    to_onnx(deployed, (64, 96), 1, out, tmp_path / "m.onnx")
    frames = torch.randint(0, 256, (2, 64, 96, 1), dtype=torch.uint8)
    frames[:, 50:] = 0
    with torch.no_grad():
        ref = deployed(frames).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": frames.numpy()}
    )[0]
    assert abs(got - ref).max() < 1e-4 and OPSET == 17
