#!/usr/bin/env bash
# The pipeline benchmark (tools/bench_pipeline.py) with production-size recognizers instead of the tiny demo
# model: ResNet-18-FCN and ResNet-50-FCN (the paper's), 224x224 gray, exported by the training toolchain.
#
#     tools/bench_pipeline_production.sh                 # resnet18 and resnet50, 10 s per measurement
#     ARCHS=resnet18 SECONDS_EACH=5 tools/bench_pipeline_production.sh
#
# Why: the demo recognizer (resnet-tiny) runs a batch of 4 in ~6 ms, so the daemon's fixed per-frame work
# (ring, decision, JSON, metrics) is a large share of it; a line runs a ResNet-18/50, where inference
# dominates. Inference time does not depend on the weights, so each model is trained for a single step on
# synthetic parts (a real checkpoint through the real export: uint8 input, manifest, parity check) — its
# verdicts mean nothing, hence the recognizer-only mode (`segmenter_mode: never`), where the work per frame
# does not depend on what the recognizer flags. Needs the training extra (torch) and Magnetic Tile in
# ../shared (the replay source); writes scratch files under runs/bench-production (git-ignored) and appends
# each result table to docs/BENCHMARKS.md (bench_pipeline.py's own format, command and commit included).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
ARCHS=${ARCHS:-resnet18 resnet50}
SECONDS_EACH=${SECONDS_EACH:-10}
WORK=runs/bench-production
DATA=$(realpath -m ../shared/datasets/magnetic-tile)
if [[ ! -d $DATA ]]; then
    echo "SKIPPED: Magnetic Tile not found at $DATA (the replay source)" >&2
    exit 0
fi
mkdir -p "$WORK"
if [[ ! -f $WORK/parts/classes.csv ]]; then
    "$PYTHON" -c "from pathlib import Path; from inspector.synth import write_dataset; \
write_dataset(Path('$WORK/parts'), 16, seed=3, size=(320, 320), defect_probability=0.5, channels=1)"
fi

for arch in $ARCHS; do
    model=$WORK/recognizer-$arch.onnx
    if [[ ! -f $model ]]; then
        echo "== $arch-FCN: one training step, export" >&2
        "$PYTHON" -m inspector.train.cli train --data "$WORK/parts" --val-fraction 0 --task recognizer \
            --arch "$arch" --size 224 --epochs 1 --steps-per-epoch 1 --batch 2 --threads 2 \
            --device cpu --no-plots --out "$WORK/train-$arch" >/dev/null
        "$PYTHON" -m inspector.train.cli export --checkpoint "$WORK/train-$arch/last.pt" --out "$model" \
            --dataset "timing only: one training step on 16 synthetic parts (weights meaningless)" \
            --parity-data "$WORK/parts" --threads 2
    fi
    # The replay config with absolute paths (this copy lives elsewhere) and the production recognizer.
    "$PYTHON" - "$WORK/replay-$arch.yaml" "$(realpath "$model")" "$DATA" <<'EOF'
import sys
from pathlib import Path

import yaml

out, model, data = sys.argv[1:]
config = yaml.safe_load(Path("configs/folder-replay.yaml").read_text())
config["source"]["path"] = data
config["models"]["recognizer"]["path"] = model
config["models"]["segmenter"]["path"] = str(Path("engines/demo/segmenter.onnx").resolve())
config["models"]["segmenter_mode"] = "never"
Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
EOF
    echo "== $arch-FCN: the best bare ONNX Runtime loop vs the daemon, $SECONDS_EACH s each" >&2
    # A production recognizer runs tens of ms a frame: a short sweep of the settings that can win on few cores.
    "$PYTHON" tools/bench_pipeline.py --config "$WORK/replay-$arch.yaml" --seconds "$SECONDS_EACH" \
        --threads "${THREADS:-1,2}" --batches "${BATCHES:-1,4,8}" --sweep-seconds 5 "$@"
done
