#!/usr/bin/env bash
# The demo models in engines/demo/, from nothing, with one command (about 20 min for the recognizer and 35 min
# for the segmenter on 2 CPU cores):
#
#     tools/make_demo_models.sh            # writes engines/demo/{recognizer,segmenter}.onnx + manifests
#
# 1. writes two synthetic data sets with inspector.synth.write_dataset (the renderer the daemon's synthetic
#    source uses, 320x320 mono8 like configs/demo.yaml's source): a training set (seed 1) and a separate test
#    set (seed 2), about a third of the defects small (< 100 px);
# 2. trains a resnet-tiny recognizer (native resolution: the 320x320 frame is the input, 10x10 blocks) and a
#    resnet-tiny segmenter (320x320, classes background + crack, pit, scratch, stain) with the recipe of
#    docs/TRAINING.md; 15 % of the training set (stratified, seeded) is held out for checkpoint selection and
#    the operating point;
# 3. evaluates both on the test set, thresholds chosen on that validation split (never on the test set);
# 4. exports both to ONNX with manifests (test metrics and suggested thresholds inside) and checks ONNX
#    Runtime against PyTorch on the test images; writes engines/demo/decision.yaml (the suggested block).
#
# Everything is seeded; torch runs with a fixed thread count, so a rerun on the same machine reproduces the
# same weights. Variables: PYTHON, WORK (scratch, default runs/demo), OUT (default engines/demo), EPOCHS_REC,
# EPOCHS_SEG, LR_REC, LR_SEG, N_TRAIN, N_TEST, THREADS, TASKS (default "recognizer segmenter": rebuild one model with
# TASKS=recognizer; decision.yaml then takes the other model's lines from its last run in WORK, else from the
# decision.yaml already in OUT).
#
# Why these sizes: from scratch, the recognizer only starts to separate defect blocks from the part's texture
# after ~1000 steps (before that its loss sits at ~0.62, learning part vs conveyor), and 480 images memorise
# long before that; 4000 synthetic images (3400 after the validation split, 213 steps per epoch) for 12 epochs
# get past it without repeating an image more than 12 times (docs/RESULTS.md, "Demo models").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
WORK=${WORK:-runs/demo}
OUT=${OUT:-engines/demo}
EPOCHS_REC=${EPOCHS_REC:-12}
EPOCHS_SEG=${EPOCHS_SEG:-8}
N_TRAIN=${N_TRAIN:-4000}
N_TEST=${N_TEST:-400}
THREADS=${THREADS:-2}
LR_REC=${LR_REC:-1e-3}
LR_SEG=${LR_SEG:-2e-3}
TASKS=${TASKS:-recognizer segmenter}
# Extra `inspector-train train` flags for the recognizer only, e.g. REC_ARGS="--aux-weight 0".
REC_ARGS=${REC_ARGS:-}
# INPUT: how frames become network input (see `inspector-train train --help`, --scale/--size).
INPUT=${INPUT:---scale 1.0 --size 320}
VAL_FRACTION=0.15
DATASET="synthetic parts (inspector.synth.write_dataset: $N_TRAIN images 320x320 mono8, seed 1, defect p 0.5, small 0.3)"
TRAIN=(-m inspector.train.cli)

started=$(date +%s)
mkdir -p "$WORK" "$OUT"
if [[ ! -f "$WORK/data/train/classes.csv" || ! -f "$WORK/data/test/classes.csv" ]]; then
    echo "== synthetic data: $N_TRAIN training and $N_TEST test images in $WORK/data"
    rm -rf "$WORK/data"
    "$PYTHON" - "$WORK/data" "$N_TRAIN" "$N_TEST" <<'EOF'
import sys
from pathlib import Path

from inspector.synth import write_dataset

root, n_train, n_test = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
common = dict(size=(320, 320), defect_probability=0.5, small_fraction=0.3, channels=1)
write_dataset(root / "train", n_train, seed=1, **common)
write_dataset(root / "test", n_test, seed=2, **common)
EOF
fi

for task in $TASKS; do
    epochs=$EPOCHS_REC
    lr=$LR_REC
    extra=$REC_ARGS
    batch=16
    [[ $task == segmenter ]] && epochs=$EPOCHS_SEG && lr=$LR_SEG && extra="" && batch=8
    echo "== train $task (resnet-tiny, $INPUT, $epochs epochs)"
    rm -rf "${WORK:?}/$task"
    "$PYTHON" "${TRAIN[@]}" train --data "$WORK/data/train" --val-fraction $VAL_FRACTION --task $task \
        --arch resnet-tiny $INPUT --epochs "$epochs" --batch "$batch" --lr "$lr" --seed 0 \
        --threads "$THREADS" --device cpu --out "$WORK/$task" $extra
    echo "== evaluate $task on the test set (operating point from the validation split)"
    "$PYTHON" "${TRAIN[@]}" evaluate --model "$WORK/$task/best.pt" --data "$WORK/data/test" \
        --val-split "$WORK/$task/split.json" --threads "$THREADS" \
        --out "$WORK/$task/eval.json" --yaml "$WORK/$task/decision.yaml"
    echo "== export $task"
    "$PYTHON" "${TRAIN[@]}" export --checkpoint "$WORK/$task/best.pt" --out "$OUT/$task.onnx" \
        --evaluation "$WORK/$task/eval.json" --dataset "$DATASET" --parity-data "$WORK/data/test" \
        --threads "$THREADS"
done

# One decision block for both models: the recognizer's block threshold, the segmenter's pixel threshold and
# minimum area. A model trained now, or earlier into WORK, gives its lines from WORK/<task>/decision.yaml; a model
# never trained in this WORK (TASKS=recognizer on a fresh checkout) keeps its lines from the decision.yaml already
# in OUT (the committed one), so rebuilding one model never drops or invents the other's operating point.
decision_lines() {  # task, keys (an ERE alternation)
    local source="$WORK/$1/decision.yaml"
    [[ -f $source ]] || source="$OUT/decision.yaml"
    echo "== decision.yaml: $1's $2 from $source" >&2
    grep -h -E "^  ($2):" "$source" || { echo "no $2 in $source: train $1 (TASKS=$1)" >&2; return 1; }
}
# Both read before decision.yaml is rewritten: either may come from the old one.
recognizer_lines=$(decision_lines recognizer block_threshold)
segmenter_lines=$(decision_lines segmenter 'pixel_threshold|min_area_px')
{
    echo "# Suggested by tools/make_demo_models.sh: operating point chosen on the validation split of the"
    echo "# synthetic training set; test metrics in engines/demo/*.manifest.json (training.metrics)."
    echo "decision:"
    echo "$recognizer_lines"
    echo "$segmenter_lines"
} >"$OUT/decision.yaml"
cat "$OUT/decision.yaml"
ls -l "$OUT"
echo "== done in $(($(date +%s) - started)) s"
