"""`inspector tune` and `inspector-train import-archive` on archives written by the real writer, checked
against decisions computed independently from the frames' original (in-memory) score maps."""

from __future__ import annotations

import csv
import json
import time
import uuid

import cv2
import numpy as np
import pytest
import yaml
from archive_helpers import DEMO_CONFIG, context, decided, decider, demo_config, demo_manifests, hand_over

from inspector import cli
from inspector.archive.marks import Mark, MarkStore
from inspector.archive.reader import ArchiveReader
from inspector.archive.tune import TuneError, apply_sets, parse_sets, run_tune, splice_decision
from inspector.archive.writer import ArchiveWriter
from inspector.config import load_config, parse_config
from inspector.decision import Decider
from inspector.train.datasets import load_dataset, load_sample, summarize
from inspector.train.import_archive import import_archive

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """60 frames of the demo's shapes and thresholds (every pass kept), and the original items by seq."""
    root = tmp_path_factory.mktemp("tune") / "archive"
    config = demo_config(root, pass_fraction=1.0, keep_free_mb=0)
    writer = ArchiveWriter(config.archive, root, "line1", "cam1", uuid.uuid4().hex)
    writer.start()
    sink = writer.bind(context(config))
    dec = decider(config)
    rng = np.random.default_rng(11)
    items = {}
    for seq in range(60):
        item = decided(dec, rng, seq, config)
        items[seq] = item
        assert hand_over(sink, item)
        while not writer.queue.empty():
            time.sleep(0.005)
    writer.close()
    assert writer.written == 60
    return root, config, items


def _expected(config, items, **decision):
    """Pass/reject of every frame at other thresholds, from the original score maps, with the pipeline's gating."""
    cfg = config.decision.model_copy(update=decision)
    d = Decider(cfg, (320, 320), *demo_manifests(), None)
    out = {}
    for seq, (_, _, _, block, pix) in items.items():
        flagged = d.flagged(block)
        if flagged and pix is None:
            out[seq] = None  # needs segmenter output that never existed
        else:
            out[seq] = d.decide(block, pix if flagged else None)[0]
    return out


def test_at_the_config_in_force_every_decision_is_reproduced(archive):
    root, _, _ = archive
    report = run_tune(root, DEMO_CONFIG, {})
    assert report.records == 60 and report.same_thresholds == 60 and report.reproduced == 60
    assert report.pass_to_reject == report.reject_to_pass == report.unknown == 0


@pytest.mark.parametrize("threshold", [0.9, 0.95])
def test_flips_when_the_block_threshold_rises(archive, threshold):
    root, config, items = archive
    report = run_tune(root, DEMO_CONFIG, {"decision.block_threshold": threshold})
    before = {seq: v.result for seq, (v, *_) in items.items()}
    after = _expected(config, items, block_threshold=threshold)
    to_pass = sum(before[s] == "reject" and after[s] == "pass" for s in items)
    to_reject = sum(before[s] == "pass" and after[s] == "reject" for s in items)
    assert to_pass > 0, "the case should flip something"
    assert (report.reject_to_pass, report.pass_to_reject) == (to_pass, to_reject)
    by_class = {c: n["reject_to_pass"] for c, n in report.by_class.items()}
    expected = {}
    for s in items:
        if before[s] == "reject" and after[s] == "pass":
            for c in {d.cls for d in items[s][1][2]}:
                expected[c] = expected.get(c, 0) + 1
    assert by_class == expected


def test_a_lower_block_threshold_is_unknown_where_the_segmenter_never_ran(archive):
    root, config, items = archive
    lower = config.decision.block_threshold / 2  # below the config's: frames the segmenter never saw get flagged
    report = run_tune(root, DEMO_CONFIG, {"decision.block_threshold": lower})
    expected = _expected(config, items, block_threshold=lower)
    assert report.unknown == sum(v is None for v in expected.values()) > 0


def test_pixel_threshold_below_the_floor_is_unknown_not_wrong(archive):
    root, _, _ = archive
    report = run_tune(root, DEMO_CONFIG, {"decision.pixel_threshold": 0.01})
    segmented = sum(1 for rec in ArchiveReader(root).records() if rec.pixel_scores() is not None)
    assert report.unknown == segmented > 0


def test_precision_recall_and_sweep_from_review_marks(archive, tmp_path):
    root, config, items = archive
    reader = ArchiveReader(root)
    marks = MarkStore(root)
    truth = {}
    for i, s in enumerate(reversed(reader.summaries())):
        if i % 2:
            continue
        # Pretend half the rejects were false and every other reviewed pass hid a defect.
        label = (
            ("false_reject" if i % 4 else "correct")
            if s.decided == "reject"
            else ("missed_defect" if i % 4 else "correct")
        )
        cls = "crack" if label != "false_reject" and not (label == "correct" and s.decided == "pass") else None
        mark = Mark(
            s.id,
            label,
            "good" if label == "false_reject" or (label == "correct" and s.decided == "pass") else "defective",
            cls,
        )
        marks.put(mark, reader.path_of(s.id))
        truth[s.seq] = mark.truth == "defective"
    try:
        report = run_tune(root, DEMO_CONFIG, {"decision.block_threshold": 0.95}, sweep_values=[0.5, 0.95])
        old = {seq: v.result == "reject" for seq, (v, *_) in items.items()}
        tp = sum(old[s] and t for s, t in truth.items())
        fp = sum(old[s] and not t for s, t in truth.items())
        fn = sum(not old[s] and t for s, t in truth.items())
        assert report.reviewed == len(truth)
        assert (report.old.tp, report.old.fp, report.old.fn) == (tp, fp, fn)
        assert report.old.precision == pytest.approx(tp / (tp + fp))
        assert [p.value for p in report.sweep] == sorted({0.5, 0.95, config.decision.block_threshold})
        new = _expected(config, items, block_threshold=0.95)
        assert report.new.tp == sum(new[s] == "reject" and t for s, t in truth.items())
        assert next(p for p in report.sweep if p.value == 0.95).reviewed.tp == report.new.tp
    finally:
        (root / "review" / "marks.jsonl").unlink()


def test_the_cli_writes_report_plot_decision_block_and_a_config_to_reload(archive, tmp_path, capsys):
    root, _, _ = archive
    out = tmp_path / "out"
    new_config = tmp_path / "line1.yaml"
    rc = cli.main(
        [
            "tune",
            "--archive",
            str(root),
            "--config",
            str(DEMO_CONFIG),
            "--set",
            "decision.block_threshold=0.9",
            "--set",
            "decision.min_area_px_per_class={crack: 40}",
            "--out",
            str(out),
            "--write-config",
            str(new_config),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "reproduced exactly" in text and "reject -> pass" in text
    block = yaml.safe_load((out / "decision.yaml").read_text())["decision"]
    assert block["block_threshold"] == 0.9 and block["min_area_px_per_class"] == {"crack": 40}
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imread(str(out / "sweep.png")).shape[1] > 400
    report = json.loads((out / "report.json").read_text())
    assert report["reproduction"]["reproduced"] == 60
    # The written config: the new decision block, everything else as it was (comments included).
    original = DEMO_CONFIG.read_text()
    written = new_config.read_text()
    assert "# ZeroMQ: a broadcast PUB stream" in written and "# The cascade:" in written
    cfg = parse_config(written)
    old = load_config(DEMO_CONFIG)
    assert cfg.decision.block_threshold == 0.9 and cfg.decision.min_area_px_per_class == {"crack": 40}
    assert cfg.model_dump(exclude={"decision"}) == old.model_dump(exclude={"decision"})
    assert original.split("\ndecision:")[0] in written


def test_bad_changes_are_refused_with_the_field_named(tmp_path):
    with pytest.raises(TuneError, match="decision thresholds only"):
        parse_sets(["source.rate_hz=5"])
    with pytest.raises(TuneError, match=r"expected SECTION\.FIELD=VALUE"):
        parse_sets(["block_threshold"])
    with pytest.raises(TuneError, match=r"decision.block_threshold: Input should be less than or equal to 1"):
        apply_sets(DEMO_CONFIG, parse_sets(["decision.block_threshold=1.5"]))
    with pytest.raises(TuneError, match="not an inspector archive"):
        run_tune(tmp_path, DEMO_CONFIG, {})


def test_splice_keeps_the_rest_of_the_file():
    text = (
        "a: 1\n# about decision\ndecision:\n  block_threshold: 0.5  # old\n  ignore_regions:\n    polygons: []\n"
        "\n# next\nb: 2\n"
    )
    out = splice_decision(text, "decision:\n  block_threshold: 0.7\n")
    assert out == "a: 1\n# about decision\ndecision:\n  block_threshold: 0.7\n\n# next\nb: 2\n"
    assert splice_decision("a: 1\n", "decision: {}\n") == "a: 1\n\ndecision: {}\n"


def test_import_archive_makes_a_data_set_the_training_loader_reads(archive, tmp_path):
    root, _, _ = archive
    reader = ArchiveReader(root)
    marks = MarkStore(root)
    summaries = list(reversed(reader.summaries()))
    reject = [s for s in summaries if s.decided == "reject"]
    passes = [s for s in summaries if s.decided == "pass"]
    painted = np.zeros((320, 320), np.uint8)
    cv2.circle(painted, (100, 120), 9, 255, -1)
    _, png = cv2.imencode(".png", painted)
    chosen = {
        reject[0].id: Mark(reject[0].id, "correct", "defective", reject[0].classes[0], "segmenter"),
        reject[1].id: Mark(reject[1].id, "false_reject", "good"),
        passes[0].id: Mark(passes[0].id, "missed_defect", "defective", "scratch", "reviewer"),
        passes[1].id: Mark(passes[1].id, "correct", "good"),
        reject[2].id: Mark(reject[2].id, "correct", "defective", reject[2].classes[0]),  # no pixel label
    }
    try:
        for rid, mark in chosen.items():
            marks.put(mark, reader.path_of(rid), png.tobytes() if mark.mask == "reviewer" else None)
        out = tmp_path / "data"
        summary = import_archive(root, out)
        assert (summary.images, summary.good, summary.defective, summary.with_mask) == (5, 2, 3, 2)
        samples, classes = load_dataset(out)
        by_name = {s.image.stem: s for s in samples}
        assert set(by_name) == set(chosen)
        assert summarize(samples)["no_pixel_labels"] == 1
        image, label = load_sample(by_name[passes[0].id], classes)
        assert np.array_equal(image, reader.open(passes[0].id).image()), "the archived frame, lossless"
        assert np.array_equal(label > 0, painted > 0) and label.max() == 1 + classes.index("scratch")
        seg = by_name[reject[0].id]
        _, seg_label = load_sample(seg, classes)
        rec = reader.open(reject[0].id)
        area = sum(d["area_px"] for d in rec.meta["decision"]["defects"])
        # Nearest-neighbour upsampling of the segmenter grid onto the frame: the area within a row/column's worth.
        upsampling = 320 / demo_manifests()[1].input.width
        assert abs(int((seg_label > 0).sum()) - area) <= 2 * upsampling * np.sqrt(area) * 4
        assert by_name[reject[1].id].cls == "good" and by_name[reject[1].id].mask is None
        with (out / "classes.csv").open() as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["name", "class"] and len(rows) == 6
        # Re-importing after a changed mark rewrites that image's label, and only that.
        marks.put(Mark(reject[0].id, "false_reject", "good"), reader.path_of(reject[0].id))
        import_archive(root, out)
        samples, _ = load_dataset(out)
        assert {s.image.stem: s for s in samples}[reject[0].id].cls == "good"
        assert not (out / "masks" / f"{reject[0].id}.png").exists()
    finally:
        (root / "review" / "marks.jsonl").unlink()


def test_import_archive_commands_and_no_torch(archive, tmp_path, capsys):
    import subprocess
    import sys

    from inspector.train import import_archive as module

    root, _, _ = archive
    reader = ArchiveReader(root)
    s = reader.summaries()[0]
    MarkStore(root).put(
        Mark(s.id, "correct", "good" if s.decided == "pass" else "defective", None), reader.path_of(s.id)
    )
    try:
        # Where the train extra is missing: python -m inspector.train.import_archive (no torch imported).
        assert module.main(["--archive", str(root), "--out", str(tmp_path / "a")]) == 0
        assert "1 images" in capsys.readouterr().out
        code = (
            "import sys; import inspector.train.import_archive, inspector.archive.review, inspector.archive.tune; "
            "sys.exit(1 if 'torch' in sys.modules else 0)"
        )
        assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0, "imports torch"
        # And as the train CLI's subcommand, where the train extra imports.
        pytest.importorskip("torch", reason="inspector-train needs the train extra (torch) to start")
        from inspector.train import cli as train_cli

        assert train_cli.main(["import-archive", "--archive", str(root), "--out", str(tmp_path / "b")]) == 0
    finally:
        (root / "review" / "marks.jsonl").unlink()


def test_inspector_train_trains_on_an_imported_archive(archive, tmp_path):
    pytest.importorskip("torch", reason="training needs the train extra (torch)")
    from inspector.train import cli as train_cli

    root, _, _ = archive
    reader = ArchiveReader(root)
    marks = MarkStore(root)
    summaries = list(reversed(reader.summaries()))
    rejects = [s for s in summaries if s.decided == "reject" and s.segmenter_ran][:8]
    passes = [s for s in summaries if s.decided == "pass"][:8]
    try:
        for s in rejects:
            marks.put(Mark(s.id, "correct", "defective", s.classes[0], "segmenter"), reader.path_of(s.id))
        for s in passes:
            marks.put(Mark(s.id, "correct", "good"), reader.path_of(s.id))
        data = tmp_path / "data"
        assert import_archive(root, data).with_mask == len(rejects)
        for task in ("recognizer", "segmenter"):
            code = train_cli.main(
                ["train", "--data", str(data), "--val-fraction", "0.25", "--out", str(tmp_path / task),
                 "--task", task, "--arch", "resnet-tiny", "--size", "96", "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch", "2", "--crop", "32", "--threads", "1", "--no-plots", "--seed", "0"]
            )  # fmt: skip
            assert code == 0
            assert (tmp_path / task / "best.pt").is_file()
    finally:
        (root / "review" / "marks.jsonl").unlink()
