"""The GenTL/GenApi libraries (the `camera` extra: harvesters and genicam), imported in this one place.

A line without a camera never imports this package (`inspector.sources.SOURCES` loads the genicam source only
when `source.kind` is genicam), so the daemon does not pay harvesters' import (about 0.3 s and 40 MB) for it.
Without the extra, importing still works; `require()` then says in one line what to install.
"""

from __future__ import annotations

import logging
import os

from inspector.sources.base import SourceError
from inspector.sources.genicam.convert import SOURCE_FORMATS

try:  # the `camera` extra
    import genicam
    from genicam.genapi import EAccessMode, EIncMode, EInterfaceType
    from genicam.genapi import GenericException as GenApiError
    from genicam.gentl import GenericException as GenTLError
    from harvesters.core import Callback, Harvester, ImageAcquirer, ParameterKey, ParameterSet
    from harvesters.util.pfnc import dict_by_names as _PFNC
except ImportError as _exc:  # pragma: no cover - depends on the installation
    IMPORT_ERROR: ImportError | None = _exc
else:
    IMPORT_ERROR = None

__all__ = [
    "PFNC_NAMES",
    "Callback",
    "EAccessMode",
    "EIncMode",
    "EInterfaceType",
    "GenApiError",
    "GenTLError",
    "Harvester",
    "ImageAcquirer",
    "ParameterKey",
    "ParameterSet",
    "default_cti",
    "quiet_harvesters",
    "require",
]


def require() -> None:
    """Raise SourceError, in one line, when the camera extra is not installed."""
    if IMPORT_ERROR is not None:
        raise SourceError(
            f"GenICam cameras need the camera extra: harvesters and genicam (pip install 'inspector[camera]'); "
            f"{IMPORT_ERROR}"
        )


def default_cti() -> str:
    """The simulated camera producer shipped inside the installed `genicam` wheel."""
    require()
    return os.path.join(os.path.dirname(genicam.__file__), "viky.cti")


def quiet_harvesters() -> None:
    # harvesters logs an ERROR with a traceback for every failed wait while a device is gone (50 a second);
    # this source reports each loss once, with its reason. INSPECTOR_HARVESTERS_LOG=1 keeps harvesters' logging.
    if not os.environ.get("INSPECTOR_HARVESTERS_LOG"):
        logging.getLogger("harvesters.core").setLevel(logging.CRITICAL)


# PFNC value (what a buffer reports) -> name, for the formats this source converts.
PFNC_NAMES: dict[int, str] = {} if IMPORT_ERROR else {_PFNC[n]: n for n in SOURCE_FORMATS if n in _PFNC}
