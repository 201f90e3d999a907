"""Frame sources. Each is one module implementing `Source`; `SOURCES` maps config `source.kind` to it.

The entries are functions that import and return the class (typed `type[Source]`, so the type checker holds
every source to the Protocol) rather than the classes themselves, so that a line without a camera never imports
harvesters (0.3 s and 40 MB at every start-up, for nothing).
"""

from __future__ import annotations

from collections.abc import Callable

from inspector.sources.base import EndOfStream, Grab, Source, SourceError, SourceEvents

__all__ = ["SOURCES", "EndOfStream", "Grab", "Source", "SourceError", "SourceEvents", "source_class"]


def _synthetic() -> type[Source]:
    from inspector.sources.synthetic import SyntheticSource

    return SyntheticSource


def _folder() -> type[Source]:
    from inspector.sources.folder import FolderSource

    return FolderSource


def _genicam() -> type[Source]:
    from inspector.sources.genicam.gentl import require

    require()  # without the camera extra: SourceError in one line, not an ImportError from deep inside
    from inspector.sources.genicam.source import GenicamSource

    return GenicamSource


SOURCES: dict[str, Callable[[], type[Source]]] = {"synthetic": _synthetic, "folder": _folder, "genicam": _genicam}


def source_class(kind: str) -> type[Source]:
    try:
        load = SOURCES[kind]
    except KeyError:
        raise SourceError(f"unknown source kind {kind!r}; known: {', '.join(sorted(SOURCES))}") from None
    return load()
