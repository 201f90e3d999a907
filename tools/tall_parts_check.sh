#!/usr/bin/env bash
# Does a recognizer recipe hold on parts unlike Magnetic Tile: tall and narrow (768x192), few of them defective
# (20 %), half of the defects small (< 100 px), a quarter at low contrast? Synthetic (inspector.synth, seeds 11
# and 12), so it is an indication for recipes, not an accuracy claim. Writes the data once, trains one variant,
# evaluates it on the held-out test set at the operating point chosen on the training run's validation split.
#
#     tools/tall_parts_check.sh squash224 --scale squash --size 224 --epochs 48   # the README's CPU recipe
#     tools/tall_parts_check.sh scale05 --scale 0.5 --epochs 48                   # aspect ratio kept
#
# Results: runs/tall/NAME/eval.json and the last lines of runs/tall/NAME.log (docs/RESULTS.md quotes them).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
W=${OUT:-runs/tall}
name=${1:?usage: tools/tall_parts_check.sh NAME [inspector-train train options]}
shift
if [[ ! -d $W/test ]]; then
    "$PYTHON" -c "
from pathlib import Path
from inspector.synth import write_dataset
write_dataset(Path('$W/train'), 480, seed=11, size=(768, 192), defect_probability=0.2, small_fraction=0.5)
write_dataset(Path('$W/test'), 240, seed=12, size=(768, 192), defect_probability=0.2, small_fraction=0.5)
"
fi
"$PYTHON" -m inspector.train.cli train --data "$W/train" --task recognizer --arch resnet-small --threads 1 \
    --no-plots --out "$W/$name" "$@" > "$W/$name.log" 2>&1
"$PYTHON" -m inspector.train.cli evaluate --model "$W/$name/best.pt" --data "$W/test" \
    --val-split "$W/$name/split.json" --threads 1 --out "$W/$name/eval.json" >> "$W/$name.log" 2>&1
grep -a "image all\|image small\|block_threshold" "$W/$name.log" | tail -3
