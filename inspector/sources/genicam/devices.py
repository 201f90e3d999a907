"""Which camera: enumerating GenTL devices and selecting exactly one by serial number, id or name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inspector.sources.base import SourceError
from inspector.sources.genicam.gentl import Harvester


@dataclass
class DeviceEntry:
    """One device as enumerated (what `inspector camera list` shows and what `device:` is matched against)."""

    vendor: str
    model: str
    serial_number: str
    id: str
    user_defined_name: str
    access_status: str
    tl_type: str
    cti: str
    info: Any = field(default=None, repr=False)  # harvesters DeviceInfo

    def label(self) -> str:
        name = f", name {self.user_defined_name!r}" if self.user_defined_name else ""
        return (
            f"serial {self.serial_number!r}, id {self.id!r}{name}: {self.vendor} {self.model} "
            f"[{self.access_status}] via {self.cti}"
        )


_ACCESS_STATUS = {0: "unknown", 1: "ready", 2: "read-only", 3: "no access", 4: "busy", 5: "open", 6: "open read-only"}


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def enumerate_devices(harvester: Harvester) -> list[DeviceEntry]:
    """Devices found by the harvester's last update(), with the .cti each came through."""
    devices = []
    for info in harvester.device_info_list:
        props = info.property_dict
        try:
            cti = info.parent.parent.parent.module.path_name  # DeviceInfo -> Interface -> System -> Producer
        except Exception:  # only decoration for the listing
            cti = "?"
        status = props.get("access_status")
        devices.append(
            DeviceEntry(
                vendor=_str(props.get("vendor")),
                model=_str(props.get("model")),
                serial_number=_str(props.get("serial_number")),
                id=_str(props.get("id_")),
                user_defined_name=_str(props.get("user_defined_name")),
                access_status=_ACCESS_STATUS.get(status, _str(status)) if isinstance(status, int) else _str(status),
                tl_type=_str(props.get("tl_type")),
                cti=cti,
                info=info,
            )
        )
    return devices


def select_device(devices: list[DeviceEntry], wanted: str | None, ctis: list[str]) -> DeviceEntry:
    """The one device whose serial number, id or user-defined name is `wanted` (or the only one when None).

    No match and several matches are both refused, listing what is there: picking "the first" of two would
    inspect the wrong line without anyone noticing.
    """
    where = ", ".join(ctis)
    if not devices:
        raise SourceError(f"no GenICam device found through {where} (is the camera connected and powered?)")
    listing = "\n".join("  - " + d.label() for d in devices)
    if wanted is None:
        if len(devices) == 1:
            return devices[0]
        raise SourceError(
            f"source.device is not set and {len(devices)} devices are present; set source.device to the serial "
            f"number, id or user-defined name of one of:\n{listing}"
        )
    matches = [d for d in devices if wanted in (d.serial_number, d.id, d.user_defined_name)]
    if not matches:
        raise SourceError(f"no device matches source.device {wanted!r} through {where}; devices present:\n{listing}")
    if len(matches) > 1:
        candidates = "\n".join("  - " + d.label() for d in matches)
        raise SourceError(
            f"source.device {wanted!r} is ambiguous: it matches {len(matches)} devices:\n{candidates}\n"
            "name one device: use a value that only one of them has (an id, or set a unique user-defined name), "
            "or list only the .cti that should serve it in source.cti"
        )
    return matches[0]
