"""Suite-wide settings."""

from __future__ import annotations

import pytest

import inspector.capacity


@pytest.fixture(autouse=True)
def _short_capacity_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    # The daemon times a second of batches at warm-up for a steady capacity figure (inspector/capacity.py). No
    # test depends on that figure's precision, and the suite starts the pipeline some hundred times in-process:
    # a quarter of a second each keeps the suite's time where it was. Daemons run as subprocesses keep the second.
    monkeypatch.setattr(inspector.capacity, "MEASURE_S", 0.25)
