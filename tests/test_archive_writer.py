"""The archive writer on a real directory: what is kept, exactness of what is stored, quota, a full disk (a
real tmpfs when this box lets us mount one), a slow disk, an unusable directory, and crashes (a writer process
killed with SIGKILL while writing)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from archive_helpers import (
    REPO,
    Events,
    context,
    decided,
    decider,
    demo_config,
    demo_manifests,
    hand_over,
    score_maps,
)

from inspector.archive import layout
from inspector.archive.marks import Mark, MarkStore
from inspector.archive.reader import ArchiveReader, RecordGone
from inspector.archive.redecide import Redecider, outcome_matches
from inspector.archive.store import ArchiveStore
from inspector.archive.writer import ArchiveWriter

# A guard against a hang, not a speed limit: each record is deflated and fsynced, about a second apiece on a
# loaded box, and a test waits for dozens; every wait is bounded by _wait on the writer making progress.
pytestmark = pytest.mark.timeout(900)


def _writer(root: Path, events: Events | None = None, store: ArchiveStore | None = None, **archive):
    config = demo_config(root, **archive)
    w = ArchiveWriter(config.archive, root, "line1", "cam1", uuid.uuid4().hex, events=events, store=store)
    w.start()
    return w, w.bind(context(config)), config


def _wait(predicate, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _drain(writer: ArchiveWriter) -> None:
    """Until the writer has taken everything queued (these tests are about content, not back-pressure). One
    record with full-size score maps took over 30 s to deflate and fsync at load average 35: a hang bound only."""
    _wait(writer.queue.empty, 300)


def test_rejects_and_an_even_sample_of_passes_are_kept_exactly(tmp_path):
    root = tmp_path / "archive"
    writer, sink, config = _writer(root, pass_fraction=0.25, keep_free_mb=0)
    dec = decider(config)
    rng = np.random.default_rng(0)
    offered = []
    for seq in range(60):
        item = decided(dec, rng, seq, config)
        kept = hand_over(sink, item)
        offered.append((item, kept))
        _drain(writer)
    writer.close()
    passes = [k for (v, *_), k in offered if v.result == "pass"]
    rejects = [k for (v, *_), k in offered if v.result == "reject"]
    assert rejects and all(rejects), "every reject is kept"
    assert sum(passes) == len(passes) // 4, "every 4th pass is kept"
    reader = ArchiveReader(root)
    summaries = reader.summaries()
    assert len(summaries) == sum(k for _, k in offered) == writer.written
    assert [s.t for s in summaries] == sorted((s.t for s in summaries), reverse=True), "newest first"
    by_seq = {s.seq: s for s in summaries}
    redecide = Redecider(reader)
    for (v, decision, frame, block, pix), kept in offered:
        if not kept:
            continue
        rec = reader.open(by_seq[v.seq].id)
        assert rec.meta["verdict"]["result"] == v.result and rec.meta["kept_as"] in ("reject", "sample")
        assert np.array_equal(rec.image(), frame), "the frame is stored losslessly"
        assert np.array_equal(rec.block_scores(), block) and rec.block_scores().dtype == np.float32
        stored = rec.pixel_scores()
        assert (stored is None) == (pix is None)
        if pix is not None:
            # Exact wherever the defect probability reaches the floor; pure background elsewhere.
            keep = (np.float32(1) - pix[0]) >= np.float32(rec.meta["pixel_floor"])
            assert np.array_equal(stored[:, keep], pix[:, keep])
            assert np.all(stored[0, ~keep] == 1.0) and np.all(stored[1:, ~keep] == 0.0)
        assert outcome_matches(redecide(rec), rec), "re-deciding with its own config reproduces the decision"
        assert rec.meta["decision"]["defects"] == [
            {"class": d.cls, "area_px": d.area_px, "bbox": list(d.bbox), "score": d.score} for d in decision[2]
        ]
    assert (root / "models").is_dir() and len(list((root / "models").glob("*.json"))) == 2
    assert (root / "configs" / f"{config.config_hash()}.json").is_file()


def test_pixel_floor_keeps_records_small(tmp_path):
    sizes = {}
    for floor in (0.0, 0.05):
        root = tmp_path / f"floor{floor}"
        writer, sink, config = _writer(root, pixel_floor=floor, keep_free_mb=0)
        dec = decider(
            config.model_copy(update={"models": config.models.model_copy(update={"segmenter_mode": "always"})})
        )
        rng = np.random.default_rng(1)
        n = 0
        for seq in range(20):
            v, decision, frame, block, _ = decided(dec, rng, seq, config)
            _, pixel = score_maps(rng, True)
            n += hand_over(sink, (v, decision, frame, block, pixel))
            _drain(writer)
        writer.close()
        sizes[floor] = writer.bytes_on_disk / max(1, n)
    assert sizes[0.05] * 4 < sizes[0.0], sizes


def test_quota_deletes_the_oldest_first_and_readers_see_only_whole_records(tmp_path):
    root = tmp_path / "archive"
    writer, sink, config = _writer(root, quota_mb=1, keep_free_mb=0, pass_fraction=1.0)
    dec = decider(config)
    rng = np.random.default_rng(2)
    seqs = []
    for seq in range(80):  # ~50-60 kB each: about 4 quotas' worth
        if hand_over(sink, decided(dec, rng, seq, config)):
            seqs.append(seq)
        _drain(writer)
    writer.close()
    reader = ArchiveReader(root)
    left = sorted(s.seq for s in reader.summaries())
    assert writer.deleted > 0 and writer.written == len(seqs)
    assert left == seqs[-len(left) :], "what is left is the newest, without holes"
    on_disk = sum(p.stat().st_size for p in (root / "records").rglob("*.zip"))
    assert on_disk == writer.bytes_on_disk <= 1 << 20
    for rec in reader.records():
        assert rec.block_scores().shape == demo_manifests()[0].grid
    assert not list((root / "tmp").iterdir())


class _GatedStore(ArchiveStore):
    """A disk that takes as long as the test says: each put waits for `go`."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.go = threading.Event()
        self.waiting = threading.Event()

    def put(self, rid, data, summary):
        self.waiting.set()
        self.go.wait(60)
        super().put(rid, data, summary)


def test_a_stalled_disk_drops_and_counts_and_offer_never_waits(tmp_path):
    root = tmp_path / "archive"
    events = Events()
    store = _GatedStore(root)
    writer, sink, config = _writer(root, events=events, store=store, pool_slots=3, keep_free_mb=0)
    dec = decider(config)
    rng = np.random.default_rng(3)
    rejects = [decided(dec, rng, i, config, defective=True) for i in range(40)]
    rejects = [r for r in rejects if r[0].result == "reject"][:12]
    assert hand_over(sink, rejects[0])
    assert store.waiting.wait(30), "the writer took the first record and now waits on the disk"
    # The writer holds one encoded record; the pool (3 slots) fills with the next three; the rest are dropped.
    results = [hand_over(sink, r) for r in rejects[1:]]
    assert results == [True] * 3 + [False] * (len(rejects) - 4)
    assert writer.dropped == {"pool_full": len(rejects) - 4}
    _wait(lambda: "dropping" in events.states())
    store.go.set()
    writer.close()
    assert writer.written == 4
    assert len(ArchiveReader(root).summaries()) == 4
    text = writer.metrics.registry.get_sample_value(
        "inspector_archive_dropped_total", {"line": "line1", "camera": "cam1", "cause": "pool_full"}
    )
    assert text == len(rejects) - 4


def test_an_unusable_directory_is_reported_and_inspection_goes_on(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the archive should be")
    events = Events()
    writer, sink, config = _writer(blocker, events=events)
    dec = decider(config)
    rng = np.random.default_rng(4)
    item = next(x for x in (decided(dec, rng, i, config, defective=True) for i in range(50)) if x[0].result == "reject")
    assert writer.available is False
    assert hand_over(sink, item) is False
    writer.close()
    assert writer.dropped == {"unavailable": 1}
    assert events.states()[0] == "unavailable"
    assert "not-a-dir" in events.seen[0][1]["detail"]


def test_a_second_daemon_on_the_same_archive_is_refused(tmp_path):
    root = tmp_path / "archive"
    first, _, _ = _writer(root)
    events = Events()
    second, _, _ = _writer(root, events=events)
    try:
        assert first.available and not second.available
        assert "another daemon writes here" in second.unavailable_reason
    finally:
        second.close()
        first.close()


def test_an_archive_of_another_line_is_refused(tmp_path):
    root = tmp_path / "archive"
    w, _, _ = _writer(root)
    w.close()
    config = demo_config(root)
    other = ArchiveWriter(config.archive, root, "line2", "cam1", "x")
    other.start()
    other.close()
    assert "belongs to line1/cam1, not line2/cam1" in other.unavailable_reason


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}); the quota test covers the logic")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_really_full_disk_deletes_the_oldest_and_keeps_writing(tmp_path):
    # A 1 MiB tmpfs and a quota far above it: the file system itself runs out (ENOSPC), not the quota.
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        root = disk / "archive"
        events = Events()
        writer, sink, config = _writer(root, events=events, quota_mb=100, keep_free_mb=0, pass_fraction=1.0)
        dec = decider(config)
        rng = np.random.default_rng(5)
        n = 0
        for seq in range(60):
            n += hand_over(sink, decided(dec, rng, seq, config))
            _drain(writer)
        writer.close()
        assert writer.written == n, f"every record written after making room (dropped {writer.dropped})"
        assert writer.deleted > 0
        reader = ArchiveReader(root)
        assert len(reader.summaries()) == writer.records_on_disk
        for rec in reader.records():
            rec.image()


def test_keep_free_that_cannot_be_met_drops_counts_and_alarms(tmp_path):
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        root = disk / "archive"
        events = Events()
        writer, sink, config = _writer(root, events=events, keep_free_mb=2)  # more than the disk has
        dec = decider(config)
        rng = np.random.default_rng(6)
        rejects = [
            x for x in (decided(dec, rng, i, config, defective=True) for i in range(40)) if x[0].result == "reject"
        ]
        for r in rejects[:5]:
            hand_over(sink, r)
        writer.close()
        assert writer.written == 0 and writer.dropped == {"no_space": 5}
        assert "dropping" in events.states()
        assert "must stay free" in next(f["detail"] for k, f in events.seen if f.get("state") == "dropping")


CHILD = """
import sys, time, uuid
sys.path[:0] = [{repo!r}, {tests!r}]
import numpy as np
from archive_helpers import context, decided, decider, demo_config, hand_over
from inspector.archive.writer import ArchiveWriter
root = {root!r}
config = demo_config(__import__("pathlib").Path(root), pass_fraction=1.0, keep_free_mb=0, quota_mb=2)
w = ArchiveWriter(config.archive, root, "line1", "cam1", uuid.uuid4().hex)
w.start()
sink = w.bind(context(config))
dec = decider(config)
rng = np.random.default_rng(int(sys.argv[1]))
items = [decided(dec, rng, i, config) for i in range(8)]
print("ready", flush=True)
seq = 0
while True:
    v = items[seq % 8][0]
    v.seq = seq
    v.t_acquired_ns = time.time_ns()
    hand_over(sink, (v, *items[seq % 8][1:]))
    seq += 1
    time.sleep(0.002)
"""


def test_a_writer_killed_mid_write_leaves_only_whole_records(tmp_path):
    root = tmp_path / "archive"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), tests=str(REPO / "tests"), root=str(root)))
    rng = np.random.default_rng(7)

    def on_disk() -> set[str]:
        return {p.name for p in (root / "records").rglob("*.zip")} if (root / "records").exists() else set()

    for round_ in range(3):
        before = on_disk()
        proc = subprocess.Popen([sys.executable, str(script), str(round_)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        # Killed while it writes: once this round's writer has finished a record (a loaded machine can take
        # seconds to get there, so wait for it rather than a fixed time), then at a random moment of the next.
        # A new record is told by its name, not by the count: at the 2 MiB quota each one written deletes the
        # oldest, so the count stops growing.
        end = time.monotonic() + 60
        while not on_disk() - before:
            assert time.monotonic() < end, "the child wrote no record within 60 s"
            assert proc.poll() is None, "the child exited"
            time.sleep(0.01)
        time.sleep(0.2 * rng.random())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        reader = ArchiveReader(root)
        summaries = reader.summaries()
        assert summaries, "the child wrote something before it was killed"
        for rec in reader.records([s.id for s in summaries]):
            assert rec.image().shape == (320, 320, 1)
            rec.block_scores()
    # The next writer adopts the archive: stray temporary files are cleared, accounting matches the disk.
    w, _, _ = _writer(root, keep_free_mb=0, quota_mb=2)
    try:
        assert w.available
        assert not list((root / "tmp").iterdir())
        assert w.bytes_on_disk == sum(p.stat().st_size for p in (root / "records").rglob("*.zip"))
    finally:
        w.close()


def test_index_is_only_a_cache(tmp_path):
    root = tmp_path / "archive"
    writer, sink, config = _writer(root, pass_fraction=1.0, keep_free_mb=0)
    dec = decider(config)
    rng = np.random.default_rng(8)
    for seq in range(6):
        hand_over(sink, decided(dec, rng, seq, config))
        _drain(writer)
    writer.close()
    expected = {s.id: s for s in ArchiveReader(root).summaries()}
    for index in (root / "records").rglob(layout.INDEX):
        lines = index.read_text().splitlines()
        index.write_text("\n".join(lines[:2]) + '\n{"id": "torn', encoding="utf-8")  # lost lines, a torn one
    again = {s.id: s for s in ArchiveReader(root).summaries()}
    assert again == expected


def test_marks_keep_their_record_past_the_quota(tmp_path):
    root = tmp_path / "archive"
    writer, sink, config = _writer(root, pass_fraction=1.0, keep_free_mb=0, quota_mb=1)
    dec = decider(config)
    rng = np.random.default_rng(9)
    hand_over(sink, decided(dec, rng, 0, config))
    _wait(lambda: writer.written == 1)
    reader = ArchiveReader(root)
    first = reader.summaries()[0]
    marks = MarkStore(root)
    marks.put(Mark(first.id, "correct", "good" if first.decided == "pass" else "defective"), reader.path_of(first.id))
    for seq in range(1, 60):
        hand_over(sink, decided(dec, rng, seq, config))
        _drain(writer)
    writer.close()
    assert not layout.record_path(root, first.id).exists(), "the quota deleted it from records/"
    assert reader.open(first.id).id == first.id, "still readable from review/records/"
    assert first.id in {s.id for s in reader.summaries()}
    with pytest.raises(RecordGone):
        reader.open("20000101T000000000000Z-00000000-000000000")


def test_check_config_names_an_archive_path_the_daemon_could_not_use(tmp_path):
    from inspector.cli import check_config

    text = (REPO / "configs" / "demo.yaml").read_text()
    config = tmp_path / "configs" / "line.yaml"
    config.parent.mkdir()
    (tmp_path / "engines").symlink_to(REPO / "engines")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    config.write_text(text.replace("path: ../archive/demo", f"path: {blocker}"))
    assert check_config(config) == [f"{config}: archive.path: {blocker} exists and is not a directory"]
    root = tmp_path / "other-line"
    w, _, _ = _writer(root)
    w.close()
    config.write_text(text.replace("path: ../archive/demo", f"path: {root}").replace("name: line1", "name: line7"))
    assert check_config(config) == [f"{config}: archive.path: {root} is the archive of line1/cam1, not line7/cam1"]
    config.write_text(text.replace("path: ../archive/demo", "path: ../fresh/archive"))
    assert check_config(config) == []
    assert not (tmp_path / "fresh").exists(), "check-config writes nothing"


def test_a_failed_batch_gives_its_staged_slots_back(tmp_path):
    root = tmp_path / "archive"
    writer, sink, config = _writer(root, pool_slots=4, keep_free_mb=0)
    dec = decider(config)
    rng = np.random.default_rng(12)
    items = [decided(dec, rng, i, config) for i in range(4)]
    for row, (_, _, frame, _, _) in enumerate(items):
        sink.stage(row, frame)
    assert sink.pool.in_use == 4
    sink.discard()  # inference raised: nothing of this batch is offered
    assert sink.pool.in_use == 0
    sink.stage(0, items[0][2])
    assert sink.offer(0, *items[0][:2], *items[0][3:]) == (items[0][0].reason.value == "defect")
    writer.close()
    assert sink.pool.in_use == 0


def test_a_pool_smaller_than_a_batch_is_refused():
    from inspector.config import ConfigError, parse_config

    text = (REPO / "configs" / "demo.yaml").read_text().replace("pool_slots: 16", "pool_slots: 2")
    with pytest.raises(ConfigError, match=r"archive.pool_slots \(2\) must be at least pipeline.batch_size \(4\)"):
        parse_config(text)
