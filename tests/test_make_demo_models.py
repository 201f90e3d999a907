"""tools/make_demo_models.sh writes one decision.yaml for both demo models: rebuilding one of them (TASKS=...)
keeps the other's lines, from its last run in WORK or else from the decision.yaml already in OUT (a fresh
checkout has no WORK). The trainer is replaced by a stand-in whose `evaluate` writes a decision block, so the
script's own logic runs in a second, without training anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "make_demo_models.sh"
COMMITTED = "decision:\n  block_threshold: 0.3141\n  pixel_threshold: 0.232\n  min_area_px: 3\n"
FRESH = {"recognizer": {"block_threshold": 0.1234}, "segmenter": {"pixel_threshold": 0.5555, "min_area_px": 42}}

# `PYTHON -m inspector.train.cli evaluate --model WORK/<task>/best.pt ... --yaml FILE` writes FRESH[task] to FILE.
FAKE_TRAINER = """#!/usr/bin/env bash
args=("$@")
[[ ${args[2]} == evaluate ]] || exit 0
for ((i = 0; i < ${#args[@]}; i++)); do
    [[ ${args[i]} == --model ]] && task=$(basename "$(dirname "${args[i+1]}")")
    [[ ${args[i]} == --yaml ]] && out=${args[i+1]}
done
mkdir -p "$(dirname "$out")"
if [[ $task == recognizer ]]; then
    printf 'decision:\\n  block_threshold: 0.1234\\n' >"$out"
else
    printf 'decision:\\n  pixel_threshold: 0.5555\\n  min_area_px: 42\\n' >"$out"
fi
"""


def _run(tmp: Path, tasks: str, old_work: dict[str, str] | None = None, committed: str | None = COMMITTED):
    work, out = tmp / "work", tmp / "out"
    for part in ("train", "test"):  # the data step is skipped when both sets exist
        (work / "data" / part).mkdir(parents=True)
        (work / "data" / part / "classes.csv").write_text("name,class\n")
    for task, text in (old_work or {}).items():
        (work / task).mkdir()
        (work / task / "decision.yaml").write_text(text)
    out.mkdir()
    if committed is not None:
        (out / "decision.yaml").write_text(committed)
    fake = tmp / "fake-python"
    fake.write_text(FAKE_TRAINER)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "WORK": str(work), "OUT": str(out), "TASKS": tasks}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    decision = out / "decision.yaml"
    return done, yaml.safe_load(decision.read_text())["decision"] if decision.exists() else None


@pytest.mark.parametrize("tasks", ["recognizer", "segmenter", "recognizer segmenter"])
def test_a_fresh_work_takes_the_other_models_lines_from_the_committed_decision(tmp_path, tasks):
    done, decision = _run(tmp_path, tasks)
    assert done.returncode == 0, done.stderr
    expected = yaml.safe_load(COMMITTED)["decision"]
    for task in tasks.split():
        expected.update(FRESH[task])
    assert decision == expected


def test_the_other_models_last_run_in_work_wins_over_the_committed_lines(tmp_path):
    old = "decision:\n  pixel_threshold: 0.9\n  min_area_px: 7\n"
    done, decision = _run(tmp_path, "recognizer", old_work={"segmenter": old})
    assert done.returncode == 0, done.stderr
    assert decision == {"block_threshold": 0.1234, "pixel_threshold": 0.9, "min_area_px": 7}


@pytest.mark.parametrize("committed", [None, "decision:\n  block_threshold: 0.5\n"])
def test_missing_lines_of_the_other_model_stop_the_script_and_leave_decision_yaml_alone(tmp_path, committed):
    done, decision = _run(tmp_path, "recognizer", committed=committed)
    assert done.returncode != 0
    assert "pixel_threshold|min_area_px" in done.stderr and "TASKS=segmenter" in done.stderr
    assert decision == (None if committed is None else {"block_threshold": 0.5})
