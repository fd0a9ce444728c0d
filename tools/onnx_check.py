"""Checks an ONNX model written by `cyclestudio export --format onnx` and runs it with ONNX Runtime,
for tests/onnx.rs (which compares the outputs with cyclestudio's own forward pass).

    python3 tools/onnx_check.py MODEL.onnx IN.f32:N,C,H,W OUT.f32 [IN2.f32:N,C,H,W OUT2.f32 ...]

Each IN file holds raw little-endian float32 values of the given NCHW shape; each OUT file gets
the model's output for it, in the same form. The ONNX checker (full check, with shape inference)
runs first. Prints one JSON line: opset, IR version, metadata properties, graph input/output
names and the shape of every output.

Needs onnx and onnxruntime (versions pinned in .ci/run).
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main(argv):
    if len(argv) < 3 or len(argv) % 2 == 0:
        sys.exit(__doc__)
    path = argv[0]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    shapes = []
    for spec, out_path in zip(argv[1::2], argv[2::2]):
        in_path, shape = spec.rsplit(":", 1)
        shape = tuple(int(d) for d in shape.split(","))
        x = np.fromfile(in_path, dtype="<f4").reshape(shape)
        (y,) = session.run(None, {inp.name: x})
        y.astype("<f4").tofile(out_path)
        shapes.append(list(y.shape))
    report = {
        "checker": "ok",
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "ir_version": model.ir_version,
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "metadata": {p.key: p.value for p in model.metadata_props},
        "input": [inp.name, [d if isinstance(d, int) else str(d) for d in inp.shape]],
        "output": [out.name, [d if isinstance(d, int) else str(d) for d in out.shape]],
        "ops": sorted({n.op_type for n in model.graph.node}),
        "output_shapes": shapes,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
