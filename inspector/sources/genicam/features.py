"""`source.features`: checking each against the device's node map (type, access, range, increment, entries) and
setting them in order, with every problem reported at once in the engineer's words."""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any

from inspector.config import GenicamFeature
from inspector.sources.base import SourceError
from inspector.sources.genicam.gentl import EAccessMode, EIncMode, EInterfaceType, GenApiError, GenTLError

log = logging.getLogger(__name__)

TYPE_NAMES = {2: "Integer", 3: "Boolean", 4: "Command", 5: "Float", 6: "String", 7: "Register", 8: "Category"}
TYPE_NAMES.update({9: "Enumeration", 10: "EnumEntry", 11: "Port", 0: "Value", 1: "Base"})
ACCESS_NAMES = {0: "not implemented", 1: "not available", 2: "write-only", 3: "read-only", 4: "read/write"}


def _node_type(node: Any) -> int:
    return int(node.node.principal_interface_type)


def access_mode(node: Any) -> int:
    return int(node.node.get_access_mode())


def _fmt(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def allowed_text(node: Any) -> str:
    """What a feature accepts, in words, for error messages and `inspector camera features`."""
    kind = _node_type(node)
    try:
        if kind == EInterfaceType.intfIEnumeration:
            return "one of: " + ", ".join(enum_entries(node))
        if kind in (EInterfaceType.intfIInteger, EInterfaceType.intfIFloat):
            text = f"{_fmt(node.min)} .. {_fmt(node.max)}"
            mode = int(node.inc_mode)
            if mode == EIncMode.fixedIncrement:
                text += f" in steps of {_fmt(node.inc)}"
            elif mode == EIncMode.listIncrement:
                text = "one of: " + ", ".join(_fmt(v) for v in node.list_of_valid_values)
            unit = getattr(node, "unit", "")
            return text + (f" {unit}" if unit else "")
        if kind == EInterfaceType.intfIBoolean:
            return "true or false"
        if kind == EInterfaceType.intfIString:
            return "a string"
    except (GenApiError, GenTLError, AttributeError) as exc:
        return f"(not readable now: {exc})"
    return "(cannot be set from a config)"


def enum_entries(node: Any) -> list[str]:
    """Entries of an enumeration that are available now (an entry can be implemented but not selectable)."""
    names = []
    for entry in node.entries:
        if int(entry.node.get_access_mode()) in (EAccessMode.RO, EAccessMode.RW):
            names.append(entry.symbolic)
    return names


def check_feature(node_map: Any, feature: GenicamFeature) -> str | None:
    """Why `feature` cannot be set on this node map as it is now, or None when it can."""
    name, value = feature.name, feature.value
    shown = f"{name} = {value!r}"
    try:
        node = node_map.get_node(name)
    except (GenApiError, AttributeError):
        close = difflib.get_close_matches(name, [n.node.name for n in node_map.nodes if n.node.is_feature()], 3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"{shown}: the device has no feature {name!r}{hint} (`inspector camera features DEVICE` lists them)"
    kind = _node_type(node)
    access = access_mode(node)
    if access not in (EAccessMode.RW, EAccessMode.WO):
        return f"{shown}: {name} is {ACCESS_NAMES.get(access, access)}, it cannot be set"
    if kind == EInterfaceType.intfIEnumeration:
        return _check_enumeration(node, name, value, shown)
    if kind == EInterfaceType.intfIBoolean:
        return None if isinstance(value, bool) else f"{shown}: {name} is a Boolean feature; give true or false"
    if kind == EInterfaceType.intfIString:
        return _check_string(node, name, value, shown)
    if kind in (EInterfaceType.intfIInteger, EInterfaceType.intfIFloat):
        return _check_number(node, kind, name, value, shown)
    return f"{shown}: {name} is a {TYPE_NAMES.get(kind, str(kind))} node, which a config cannot set"


def _check_enumeration(node: Any, name: str, value: Any, shown: str) -> str | None:
    allowed = enum_entries(node)
    if isinstance(value, str) and value in allowed:
        return None
    # YAML 1.1 reads unquoted On/Off/Yes/No as booleans: TriggerMode: Off arrives as False.
    hint = ' (YAML reads unquoted On/Off as true/false: write "On"/"Off")' if isinstance(value, bool) else ""
    return f"{shown}: not an allowed entry of {name}; the device allows: {', '.join(allowed)}{hint}"


def _check_string(node: Any, name: str, value: Any, shown: str) -> str | None:
    if not isinstance(value, str):
        return f"{shown}: {name} is a String feature; give a string"
    max_length = getattr(node, "max_length", None)
    if isinstance(max_length, int) and len(value) > max_length:
        return f"{shown}: longer than the {max_length} characters {name} holds"
    return None


def _check_number(node: Any, kind: int, name: str, value: Any, shown: str) -> str | None:
    integer = kind == EInterfaceType.intfIInteger
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{shown}: {name} is an {TYPE_NAMES.get(kind, str(kind))} feature; give a number ({allowed_text(node)})"
    if integer and not float(value).is_integer():
        return f"{shown}: {name} is an Integer feature; give a whole number ({allowed_text(node)})"
    lo, hi = node.min, node.max
    mode = int(node.inc_mode)
    if mode == EIncMode.listIncrement:
        if not any(math.isclose(value, v, rel_tol=1e-9, abs_tol=1e-12) for v in node.list_of_valid_values):
            return f"{shown}: not a valid value of {name}; the device allows {allowed_text(node)}"
        return None
    tolerance = 0 if integer else 1e-9 * max(1.0, abs(hi), abs(lo))
    if value < lo - tolerance or value > hi + tolerance:
        return f"{shown}: out of range; the device allows {allowed_text(node)}"
    if mode == EIncMode.fixedIncrement and _off_increment(value, lo, node.inc, integer):
        return f"{shown}: not on the increment; the device allows {allowed_text(node)}"
    return None


def _off_increment(value: float, lo: float, inc: float, integer: bool) -> bool:
    if integer:
        return bool((int(value) - lo) % inc != 0)
    steps = (value - lo) / inc
    return abs(steps - round(steps)) > 1e-6 * max(1.0, abs(steps))


def apply_features(node_map: Any, features: list[GenicamFeature], device: str) -> None:
    """Check every feature against the node map, then (only if all pass) set them in order.

    Each one is checked again just before it is set, because an earlier feature can change what a later one
    allows (e.g. OffsetX narrows the Width range). All problems are reported at once.
    """
    problems = [p for p in (check_feature(node_map, f) for f in features) if p]
    if problems:
        raise SourceError(f"source.features rejected by device {device}:\n  - " + "\n  - ".join(problems))
    for feature in features:
        problem = check_feature(node_map, feature)
        if problem:
            raise SourceError(f"source.features rejected by device {device} once earlier ones were set: {problem}")
        node = node_map.get_node(feature.name)
        kind = _node_type(node)
        value: Any = feature.value
        if kind == EInterfaceType.intfIInteger:
            value = int(value)
        elif kind == EInterfaceType.intfIFloat:
            value = float(value)
        try:
            node.value = value
        except (GenApiError, GenTLError) as exc:
            raise SourceError(f"device {device} refused {feature.name} = {feature.value!r}: {exc}") from None
        log.debug("set %s = %r on %s", feature.name, feature.value, device)


def read_node(node_map: Any, name: str) -> Any:
    try:
        return node_map.get_node(name).value
    except (GenApiError, GenTLError, AttributeError):
        return None
