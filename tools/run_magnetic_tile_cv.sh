#!/usr/bin/env bash
# The paper's protocol on Magnetic Tile (Huang, Qiu, Yuan, "Surface defect saliency of magnetic tile",
# The Visual Computer, 2018): 5 group-aware stratified folds, recognizer vs ResNet classifier and segmenter vs
# DeepLabv3+ on the same folds. Defaults: the CPU ladder's model (resnet-small, native resolution, each model
# at most 60 minutes of training per fold); each finished (fold, model) result goes to docs/results/$NAME/
# so the protocol can run fold by fold over several sessions and be committed as it goes.
#
#     tools/run_magnetic_tile_cv.sh --only-groups 0                      # one fold (all four models), CPU
#     tools/run_magnetic_tile_cv.sh --only-groups 1 --tasks recognizer,classifier
#     NAME=mt-r50 tools/run_magnetic_tile_cv.sh --arch resnet50 --device cuda --threads 8 --max-minutes 0
#     .venv/bin/inspector-train cv-summary --results docs/results/mt-small --out docs/results/mt-small.json \
#         --markdown docs/results/mt-small.md                                # merge what has run
#
# Any `inspector-train cv` flag given here overrides the default before it (argparse keeps the last value).
# Fold g depends only on (--seed, --groups, the data set), so runs on different days or machines use the same
# folds. Variables: PYTHON, DATA, NAME (results name, default mt-small), OUT (run folder, default runs/cv-$NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/magnetic-tile}
NAME=${NAME:-mt-small}
OUT=${OUT:-runs/cv-$NAME}
if [[ ! -d $DATA ]]; then
    echo "Magnetic Tile not found at $DATA (set DATA=...)" >&2
    exit 2
fi
exec "${PYTHON:-.venv/bin/python}" -m inspector.train.cli cv --data "$DATA" --out "$OUT" \
    --results "docs/results/$NAME" --arch resnet-small --groups 5 --val-fraction 0.15 --epochs 30 \
    --tasks recognizer,classifier,segmenter,deeplabv3plus --device auto --threads 2 --seed 0 \
    --resume "$@"
