"""Everything that makes engines: ONNX checks, INT8 calibration/quantisation, the TensorRT builder and the
`inspector-build-engine` command. The `build` extra (onnx; TensorRT itself comes with the `gpu` extra).

The daemon never imports this package: the runtime backends only load engines. Building depends on the runtime
(manifests, preprocessing, the GPU helpers), never the other way round; tests/test_architecture.py checks it.
When `models.tensorrt.auto_rebuild` needs an engine, the TensorRT backend runs `python -m inspector.build` in a
child process (see inspector/backends/tensorrt.py).
"""


class BuildError(Exception):
    """An engine cannot be built; the message says why."""
