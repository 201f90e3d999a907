#!/usr/bin/env bash
# Every GPU test and benchmark of the GPU backends, in one go, on a machine with an NVIDIA GPU.
#   tools/gpu_check.sh                 # results under docs/gpu-results/<UTC date>/, summary in SUMMARY.md there
#   WHEELS=/path/to/wheels tools/gpu_check.sh   # offline machine: install tensorrt/onnxruntime-gpu from there
# Steps (each one's output is kept; a failing step does not stop the others; the exit status says if any failed):
#   1. environment: nvidia-smi, Python packages, what could be installed
#   2. pytest: every test marked gpu/tensorrt in tests/test_gpu_backends.py and tests/test_tensorrt.py
#   3. models: engines/demo/*.onnx, else freshly exported (untrained) ResNet-50 recognizer + segmenter
#   4. TensorRT (if importable): build fp32/fp16/int8 engines, agreement report vs ONNX Runtime, benchmark
#   5. CUDA backend (if onnxruntime has the CUDA provider): agreement report and benchmark
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT/tests:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT="${GPU_RESULTS:-docs/gpu-results/$(date -u +%Y-%m-%d)}"
mkdir -p "$OUT"
SUMMARY="$OUT/SUMMARY.md"
FAILED=0
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
step() {  # step NAME COMMAND... : run, log to $OUT/NAME.log, record the result
    local name=$1; shift
    echo "== $name: $*"
    if "$@" > "$OUT/$name.log" 2>&1; then say "- $name: ok (\`$*\`)"; else
        local rc=$?; FAILED=1; say "- $name: FAILED rc=$rc (\`$*\`, see $name.log)"; tail -20 "$OUT/$name.log"; fi
}

say "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
say ""
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || say "- nvidia-smi: not available"
say "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"

# 1. install what can be installed (an offline machine fails quietly here and the steps below skip)
PIP=("$PY" -m pip install -q)
[ -n "${WHEELS:-}" ] && PIP+=(--no-index --find-links "$WHEELS")
for pkg in cuda-python onnxruntime-gpu tensorrt; do
    if "${PIP[@]}" "$pkg" > "$OUT/pip-$pkg.log" 2>&1; then say "- installed $pkg"; else say "- could not install $pkg (see pip-$pkg.log)"; fi
done
"$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|onnx|onnxruntime|onnxruntime-gpu|tensorrt|tensorrt-lean|cuda-python|cuda-bindings|cupy|numpy|opencv)" > "$OUT/packages.txt"
HAVE_TRT=$("$PY" -c "import tensorrt; print(tensorrt.__version__)" 2>/dev/null || true)
HAVE_ORT_CUDA=$("$PY" -c "import onnxruntime as o; print('yes' if 'CUDAExecutionProvider' in o.get_available_providers() else '')" 2>/dev/null || true)
say "- TensorRT: ${HAVE_TRT:-not available}; ONNX Runtime CUDA provider: ${HAVE_ORT_CUDA:-not available}"
say ""

# 2. the GPU tests (skips are listed with their reasons by -rs)
step pytest-gpu "$PY" -m pytest -q -rs -m "gpu or tensorrt" tests/test_gpu_backends.py tests/test_tensorrt.py

# 3. models to build/run: the demo models, else untrained ResNet-50s exported like the toolchain does
MODELS="${GPU_WORK:-${TMPDIR:-/tmp}/inspector-gpu-check}"  # engines are large: kept out of docs/
mkdir -p "$MODELS"
REC=$(ls engines/demo/*recognizer*.onnx 2>/dev/null | head -1)
SEG=$(ls engines/demo/*segmenter*.onnx 2>/dev/null | head -1)
if [ -z "$REC" ]; then
    step export-resnet50 "$PY" - "$MODELS" <<'PYEOF'
import sys, torch
from pathlib import Path
from inspector.train.models import Deployed, build_model, mean_std
from inspector.manifest import *
out = Path(sys.argv[1]); h, w = 512, 512
for task, name in (("recognizer", "block_scores"), ("segmenter", "pixel_scores")):
    net = Deployed(build_model(task, "resnet50", 1, num_classes=3), task, *mean_std(1)).eval()
    path = out / f"{task}.onnx"
    torch.onnx.export(net, (torch.zeros(1, h, w, 1, dtype=torch.uint8),), str(path), input_names=["image"],
                      output_names=[name], dynamic_axes={"image": {0: "N"}, name: {0: "N"}}, opset_version=17, dynamo=False)
    shape = ["N", h // 32, w // 32] if task == "recognizer" else ["N", 3, h, w]
    write_manifest(path, ModelManifest(task=task, format="onnx", file=path.name, sha256=sha256_file(path),
        architecture=f"resnet50-{task}-untrained-benchmark", input=InputSpec(height=h, width=w, channels=1),
        outputs=[OutputSpec(name=name, shape=shape, meaning="benchmark model, untrained")],
        preprocessing=Preprocessing(color="gray", mean=list(mean_std(1)[0]), std=list(mean_std(1)[1])),
        batch=BatchSpec(min=1, opt=8, max=64), block_size=32 if task == "recognizer" else None,
        classes=["normal", "defect"] if task == "recognizer" else ["background", "scratch", "dent"], opset=17))
PYEOF
    REC="$MODELS/recognizer.onnx"; SEG="$MODELS/segmenter.onnx"
fi
step onnx-check "$PY" -m inspector.build.onnx_check "$REC" ${SEG:+"$SEG"}

# calibration images for INT8: the data set if present, else synthetic frames
CALIB="${CALIBRATION:-$MODELS/calibration}"
if [ ! -d "$CALIB" ]; then
    mkdir -p "$CALIB"
    "$PY" -c "
import cv2, numpy as np, sys
rng = np.random.default_rng(0)
for i in range(128):
    img = cv2.GaussianBlur(rng.normal(128, 25, (512, 512)).clip(0, 255), (7, 7), 2).astype(np.uint8)
    cv2.imwrite(f'$CALIB/{i:04d}.png', img)
"
fi

# 4. TensorRT engines, agreement, benchmark
if [ -n "$HAVE_TRT" ]; then
    for precision in fp32 fp16 int8; do
        for m in "$REC" $SEG; do
            base=$(basename "$m" .onnx)
            step "build-$base-$precision" "$PY" -m inspector.build "$m" --precision "$precision" --batch 16 \
                --calibration "$CALIB" --output "$MODELS/$base.$precision.engine" --timing-cache "$MODELS/timing.cache"
        done
        step "compare-tensorrt-$precision" "$PY" tools/compare_backends.py --backend tensorrt --precision "$precision" \
            --recognizer "$REC" --recognizer-model "$MODELS/$(basename "$REC" .onnx).$precision.engine" \
            ${SEG:+--segmenter "$SEG" --segmenter-model "$MODELS/$(basename "$SEG" .onnx).$precision.engine"} --out "$OUT"
    done
    for precision in fp16 int8; do
        step "bench-tensorrt-$precision" "$PY" tools/bench_gpu.py --backend tensorrt --frame 2048x2448x1 --max-batch 16 \
            --model "recognizer=$MODELS/$(basename "$REC" .onnx).$precision.engine" \
            ${SEG:+--model "segmenter=$MODELS/$(basename "$SEG" .onnx).$precision.engine"} ${CONFIG:+--config "$CONFIG"} --out "$OUT/$precision"
    done
else
    say "- TensorRT steps skipped: TensorRT is not installed on this machine"
fi

# 5. the CUDA backend
if [ -n "$HAVE_ORT_CUDA" ]; then
    step compare-cuda "$PY" tools/compare_backends.py --backend cuda --recognizer "$REC" ${SEG:+--segmenter "$SEG"} --out "$OUT"
    step bench-cuda "$PY" tools/bench_gpu.py --backend cuda --frame 2048x2448x1 --max-batch 16 --model "recognizer=$REC" \
        ${SEG:+--model "segmenter=$SEG"} ${CONFIG:+--config "$CONFIG"} --out "$OUT"
else
    say "- CUDA-backend steps skipped: onnxruntime has no CUDA provider here (install onnxruntime-gpu)"
fi

say ""
for f in "$OUT"/compare-*.md "$OUT"/bench-*.md "$OUT"/*/bench-*.md; do [ -f "$f" ] && { cat "$f"; echo; } >> "$SUMMARY"; done
echo "results: $OUT (summary: $SUMMARY)"
exit $FAILED
