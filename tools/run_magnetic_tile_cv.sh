#!/usr/bin/env bash
# The paper's protocol on Magnetic Tile (Huang, Qiu, Yuan, "Surface defect saliency of magnetic tile",
# The Visual Computer, 2018): 5 stratified cross-validation groups, recognizer vs ResNet classifier and
# segmenter vs DeepLabv3+ on the same groups, ResNet-50 at 224x224 (the paper's network and input).
#
#     tools/run_magnetic_tile_cv.sh                      # full protocol: for the GPU machine
#     tools/run_magnetic_tile_cv.sh --arch resnet-tiny --epochs 4 --groups 2 \
#         --tasks recognizer,classifier --threads 2 --workers 1 --device cpu --out runs/cv-mt-cpu   # reduced, CPU
#
# Any `inspector-train cv` flag given here overrides the default before it (argparse keeps the last value).
# Group g's split depends only on (--seed, g), so a reduced run with --groups 2 uses exactly the first two
# groups of the full run. Results: OUT/cv.md (tables), OUT/cv.json (numbers, command, commit, hardware, times);
# --resume continues a killed run. Variables: PYTHON, DATA.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/magnetic-tile}
if [[ ! -d $DATA ]]; then
    echo "Magnetic Tile not found at $DATA (set DATA=...)" >&2
    exit 2
fi
exec "${PYTHON:-.venv/bin/python}" -m inspector.train.cli cv --data "$DATA" --out runs/cv-magnetic-tile-r50 \
    --arch resnet50 --size 224 --epochs 30 --batch 8 --groups 5 --test-fraction 0.2 --val-fraction 0.1 \
    --tasks recognizer,classifier,segmenter,deeplabv3plus --device auto --workers 4 --threads 4 --seed 0 "$@"
