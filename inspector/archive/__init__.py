"""The evidence archive: what the daemon keeps of rejected frames and a sample of passes, and the tools on it.

    layout.py    the on-disk format (docs/ARCHIVE.md), the only code that writes or parses it
    store.py     the directory as the writer uses it: lock, crash-safe put/delete, snapshots, free space
    writer.py    the hand-over from the inference thread (ArchiveSink.offer) and the writer thread
    metrics.py   inspector_archive_* Prometheus series
    reader.py    listing, filtering and opening records (review, tune, import)
    marks.py     reviewers' marks beside the archive
    redecide.py  re-deciding a record with inspector.decision (the daemon's own code) at any thresholds
    tune.py      `inspector tune`: flips, precision/recall, a threshold sweep, the decision block
    review.py    `inspector review`: the local review web page

The pipeline sees only `FrameArchive` (below); the rest never runs on the hot path. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from inspector.frames import Defect, Reason, Verdict


class FrameArchive(Protocol):
    """What the inference thread calls when the archive is on (never when it is off). All return at once."""

    def stage(self, row: int, frame: np.ndarray) -> None:
        """Before batch row `row`'s ring slot is released: a bounded copy of its pixels (or a noted miss)."""
        ...

    def offer(
        self,
        row: int,
        verdict: Verdict,
        decision: tuple[str, Reason, Sequence[Defect], float],
        block_scores: np.ndarray,
        pixel_scores: np.ndarray | None,
    ) -> bool:
        """After the decision: True if the frame was handed over for writing, False if not kept or dropped
        (counted)."""
        ...

    def discard(self) -> None:
        """The batch failed after staging: give back what it staged."""
        ...
