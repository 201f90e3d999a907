"""TensorRT-compatibility check of ONNX graphs (inspector.build.onnx_check): runs without TensorRT."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inspector.build.onnx_check import TRT10_OPERATORS, check_model, main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _model(nodes, inits=(), *, h=32, w=32, c=1, opset=17, out_shape=("N", 4, 32, 32), out_type=TensorProto.FLOAT):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", h, w, c])],
        [helper.make_tensor_value_info("y", out_type, list(out_shape))],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _front():
    """Cast first, then NHWC->NCHW: the TensorRT-friendly way to take a uint8 image."""
    return [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2]),
    ]


def _conv_inits(cin=1, cout=4):
    return [numpy_helper.from_array(np.ones((cout, cin, 3, 3), np.float32), "w")]


def _conv(inp="x", out="y"):
    return helper.make_node("Conv", [inp, "w"], [out], pads=[1, 1, 1, 1], name="conv")


def _messages(report):
    return " | ".join(str(f) for f in report.errors)


def test_a_plain_cnn_passes():
    report = check_model(_model([*_front(), _conv()], _conv_inits()))
    assert report.ok, report.format()
    assert report.opset == 17 and report.operators["Conv"] == 1


def test_operator_table_is_the_parsers():
    # Spot checks against docs/operators.md (10.1-GA): what a CNN needs is in, what the parser lacks is out.
    for op in ("Conv", "Relu", "Resize", "Softmax", "QuantizeLinear", "DequantizeLinear", "Cast", "Transpose"):
        assert op in TRT10_OPERATORS
    for op in ("Unique", "QLinearConv", "ConvInteger", "MatMulInteger", "SequenceAt", "STFT"):
        assert op not in TRT10_OPERATORS
    assert "UINT8" in TRT10_OPERATORS["Cast"] and "UINT8" not in TRT10_OPERATORS["Transpose"]


def test_uint8_permute_before_cast_is_refused():
    nodes = [
        helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2], name="permute"),
        helper.make_node("Cast", ["t"], ["x"], to=TensorProto.FLOAT),
        _conv(),
    ]
    report = check_model(_model(nodes, _conv_inits()))
    assert not report.ok
    assert "UINT8 intermediate" in _messages(report) and "permute" in _messages(report)


def test_unsupported_operator_and_domain():
    nodes = [*_front(), _conv("x", "c"), helper.make_node("Unique", ["c"], ["y"], name="uniq")]
    report = check_model(_model(nodes, _conv_inits(), out_shape=("K",)))
    assert "uniq (Unique): not supported" in _messages(report)
    nodes = [*_front(), _conv("x", "c"), helper.make_node("Gelu", ["c"], ["y"], domain="com.microsoft", name="ms")]
    model = _model(nodes, _conv_inits())
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert "domain 'com.microsoft'" in _messages(check_model(model))


@pytest.mark.parametrize("opset,ok", [(8, False), (13, True), (20, True), (21, False)])
def test_opset_range(opset, ok):
    nodes = [*_front(), helper.make_node("Relu", ["x"], ["y"])]
    report = check_model(_model(nodes, opset=opset, out_shape=("N", 1, 32, 32)))
    assert report.ok is ok, report.format()


def test_dynamic_image_size_is_refused_but_dynamic_batch_is_fine():
    graph = helper.make_graph(
        [*_front(), helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", 32, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", 32])],
    )
    report = check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert "H must be static" in _messages(report)
    assert "non-batch dimensions must be static" in _messages(report)


def test_input_must_be_uint8_nhwc_of_the_manifest_size():
    report = check_model(_model([*_front(), _conv()], _conv_inits()), expect_input=(64, 32, 1))
    assert "the manifest says (64, 32, 1)" in _messages(report)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["y"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 32, 32])],
    )
    assert "uint8 NHWC" in _messages(check_model(helper.make_model(graph)))


def test_resize_modes():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")

    def resize(**attrs):
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", **attrs)
        return check_model(_model([*_front(), node], [scales], out_shape=("N", 1, 64, 64)))

    assert resize(mode="linear").ok
    assert resize(mode="nearest", coordinate_transformation_mode="asymmetric").ok
    assert "mode 'cubic' unsupported" in _messages(resize(mode="cubic"))
    assert "antialias" in _messages(resize(mode="linear", antialias=1))
    assert "tf_crop_and_resize" in _messages(resize(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"))


def test_quantize_zero_point_must_be_zero():
    def qdq(zp):
        inits = [
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(np.array(zp, np.int8), "zp"),
        ]
        nodes = [
            *_front(),
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
            helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq"),
        ]
        return check_model(_model(nodes, inits, out_shape=("N", 1, 32, 32)))

    assert qdq(0).ok
    assert "zero point must be 0" in _messages(qdq(3))


def test_reduce_axes_must_be_constant():
    nodes = [
        *_front(),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "st", "en"], ["axes"]),
        helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean"),
    ]
    inits = [numpy_helper.from_array(np.array([3], np.int64), n) for n in ("st", "en")]
    assert "`axes` must be an initializer" in _messages(check_model(_model(nodes, inits, opset=18, out_shape=("N",))))
    const = [*_front(), helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=0)]
    model = _model(const, [numpy_helper.from_array(np.array([2, 3], np.int64), "ax")], opset=18, out_shape=("N", 1))
    assert check_model(model).ok


def test_cli_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.onnx"
    bad = tmp_path / "bad.onnx"
    onnx.save(_model([*_front(), _conv()], _conv_inits()), good)
    onnx.save(_model([*_front(), _conv()], _conv_inits(), opset=21), bad)
    assert main([str(good)]) == 0
    assert main([str(good), str(bad)]) == 1
    assert "outside TensorRT 10.x's supported range" in capsys.readouterr().out


DEMO_MODELS = sorted((ROOT / "engines" / "demo").glob("*.onnx"))


@pytest.mark.skipif(not DEMO_MODELS, reason="no ONNX models in engines/demo/ yet (exported by inspector-train export)")
@pytest.mark.parametrize("path", DEMO_MODELS, ids=lambda p: p.name)
def test_demo_models_are_tensorrt_compatible(path):
    from inspector.manifest import read_manifest

    manifest = read_manifest(path)
    report = check_model(path, expect_input=(manifest.input.height, manifest.input.width, manifest.input.channels))
    assert report.ok, report.format()


@pytest.mark.parametrize("task", ["recognizer", "segmenter"])
def test_fresh_resnet50_export_is_tensorrt_compatible(task, tmp_path):
    """The training toolchain's export wrapper (uint8 NHWC in, softmax out) on ResNet-50, opset 17, dynamic batch."""
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("inspector.train.models")
    net = models.build_model(task, "resnet50", 1, num_classes=3)
    mean, std = models.mean_std(1)
    deployed = models.Deployed(net, task, mean, std).eval()
    name = "block_scores" if task == "recognizer" else "pixel_scores"
    path = tmp_path / f"{task}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            deployed,
            (torch.zeros(1, 128, 160, 1, dtype=torch.uint8),),
            str(path),
            input_names=["image"],
            output_names=[name],
            dynamic_axes={"image": {0: "N"}, name: {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    report = check_model(path, expect_input=(128, 160, 1))
    assert report.ok, report.format()
    assert report.operators.get("Conv", 0) >= 53  # it really is a ResNet-50
