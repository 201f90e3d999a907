"""GenICam camera source (`source.kind: genicam`), one module per concern:

- `gentl`: the GenTL/GenApi libraries (harvesters, genicam: the `camera` extra), imported only here;
- `convert`: camera pixel format -> ring slot (the frame's one copy) and the image inside a GenTL buffer;
- `devices`: enumerating devices and selecting exactly one (`source.device`);
- `features`: checking `source.features` against the node map and setting them;
- `source`: `GenicamSource`, the fetch loop and its state machine (streaming, lost, reconnecting).

Nothing is re-exported here: importing `inspector.sources.genicam.convert` must not pull in harvesters.
"""
