"""A config file is untrusted input: whatever it holds, loading it returns a Config or raises one ConfigError
(file, line, field), within bounded memory and time; never a traceback, a hang or a killed daemon.

The files here are the ones that killed or wedged the daemon before the loader was bounded: an alias bomb of a
few KB (7.8 GB of memory), a list nested thousands deep (RecursionError), an integer too large for a C long
(OverflowError), values accepted and then met at start (a seed of -1, a rate of 1e-300 Hz)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from inspector.config import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    Config,
    ConfigError,
    GenicamFeature,
    load_config,
    parse_config,
)
from inspector.gateway.config import GatewayLineConfig, parse_gateway_config

pytestmark = pytest.mark.timeout(300)

MINIMAL = """\
source:
  kind: synthetic
models:
  recognizer:
    path: rec.onnx
  segmenter_mode: never
"""


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: `width`**`levels` items from a few hundred bytes."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return MINIMAL + "\n".join(lines) + "\n"


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "line1.yaml")
    return info.value


# The file, the line, the field (where there is one) and words of the message.
HOSTILE = {
    "alias bomb": (alias_bomb(), "line1.yaml:7: a0: anchor &a0 refused"),
    "alias without anchor use": (MINIMAL + "x: *nothing\n", "line1.yaml:7: x: alias *nothing refused"),
    "list nested 3000 deep": (MINIMAL + "x: " + "[" * 3000 + "]" * 3000 + "\n", "line1.yaml:7: "),
    "mapping nested 40 deep": (MINIMAL + "x: " + "{a: " * 40 + "1" + "}" * 40 + "\n", f"deeper than {MAX_DEPTH}"),
    "block nesting 40 deep": (
        MINIMAL + "".join("  " * i + "a:\n" for i in range(40)) + "  " * 40 + "b: 1\n",
        f"nesting deeper than {MAX_DEPTH} levels",
    ),
    "integer of 5000 digits": (MINIMAL + "pipeline: {batch_size: " + "9" * 5000 + "}\n", "pipeline.batch_size: "),
    "integer beyond a C long": (
        MINIMAL.replace("kind: synthetic", "kind: synthetic\n  seed: 18446744073709551616"),
        "line1.yaml:3: source.seed: integer beyond 64 bits refused",
    ),
    "hex integer beyond a C long": (MINIMAL + "pipeline: {ring_slots: 0x1" + "0" * 30 + "}\n", "beyond 64 bits"),
    "negative seed": (
        MINIMAL.replace("kind: synthetic", "kind: synthetic\n  seed: -1"),
        "line1.yaml:3: source.seed: Input should be greater than or equal to 0 (got -1)",
    ),
    "rate of 1e-300 Hz": (
        MINIMAL.replace("kind: synthetic", "kind: synthetic\n  rate_hz: 1.0e-300"),
        "line1.yaml:3: source.rate_hz: Input should be greater than or equal to 0.01",
    ),
    "infinite deadline": (
        MINIMAL + "pipeline: {deadline_ms: .inf}\n",
        "pipeline.deadline_ms: Input should be a finite",
    ),
    "float overflowing to inf": (MINIMAL + "archive: {pass_fraction: 1.0e400}\n", "archive.pass_fraction: Input"),
    "nan threshold": (MINIMAL + "decision: {block_threshold: .nan}\n", "decision.block_threshold: Input should be a"),
    "nan polygon point": (
        MINIMAL + "decision: {ignore_regions: {polygons: [[[0, 0], [.nan, 0], [5, 5]]]}}\n",
        "decision.ignore_regions.polygons.0.1.0: Input should be a finite number",
    ),
    "python tag": (MINIMAL + "x: !!python/object/apply:os.system ['true']\n", "line1.yaml:7: not valid YAML"),
    "unknown local tag": (MINIMAL + "x: !boom 1\n", "line1.yaml:7: not valid YAML"),
    "binary value": (MINIMAL + "gateway: {x: !!binary /w==}\n", "line1.yaml:7: gateway.x: binary values are not"),
    "set value": (MINIMAL + "gateway: {x: !!set {a: null}}\n", "gateway.x: set values are not allowed"),
    "impossible date": (MINIMAL + "x: 2024-02-30\n", "line1.yaml:7: x: cannot read this value"),
    "mapping as a key": (MINIMAL + "? [a, b]\n: 1\n", "line1.yaml:"),
    "newline in a key": (MINIMAL + '"x\\ny": 1\n', "line1.yaml:7: x\\ny: unknown field"),
    "tcp port beyond 65535": (
        MINIMAL + 'publish: {broadcast: {bind: "tcp://127.0.0.1:70000"}}\n',
        "line1.yaml:7: publish.broadcast.bind: a tcp endpoint is tcp://HOST:PORT",
    ),
    "a ring of terabytes": (
        MINIMAL.replace("kind: synthetic", "kind: synthetic\n  width: 16384\n  height: 16384\n  pixel_format: rgb8")
        + "pipeline: {ring_slots: 4096}\n",
        "pipeline.ring_slots 4096 x 16384x16384 rgb8 frames is 3072.0 GiB, more than the 16 GiB",
    ),
    "too many values": (MINIMAL + "x: [" + ", ".join(["1"] * (MAX_NODES + 10)) + "]\n", f"more than {MAX_NODES}"),
    "control character": (MINIMAL + "x: \x07\n", "line1.yaml"),
    "reconnect backoff of -1 ms": (
        "source: {kind: genicam, reconnect_backoff_ms: [100, -1]}\nmodels: {recognizer: {path: r}, "
        "segmenter_mode: never}\n",
        "source.reconnect_backoff_ms.1: Input should be greater than or equal to 10",
    ),
    "expect_input of a billion": (
        MINIMAL.replace("path: rec.onnx", "path: rec.onnx\n    expect_input: [1000000000, 64]"),
        "models.recognizer.expect_input.0: Input should be less than or equal to 16384",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_file_is_one_config_error_with_its_line(name):
    text, words = HOSTILE[name]
    err = _error(text)
    assert words in str(err), str(err)
    assert str(err).startswith("line1.yaml"), str(err)
    assert all(line.startswith("line1.yaml") for line in str(err).splitlines()), str(err)
    assert all(len(line) < 400 for line in str(err).splitlines()), str(err)  # a value is shown short


def test_the_gateway_section_goes_through_the_same_bounded_loader():
    with pytest.raises(ConfigError, match="anchor &a0 refused"):
        parse_gateway_config(alias_bomb())


def test_a_file_over_the_size_cap_is_refused_before_it_is_parsed(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(MINIMAL + "#" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match=r"big.yaml: cannot read file: larger than 1024 KiB"):
        load_config(big)
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        parse_config(MINIMAL + "#" * MAX_CONFIG_BYTES + "\n")


def test_what_is_not_a_regular_file_is_refused_without_reading_it(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/zero")  # read whole, it would never end
    fifo = tmp_path / "line.yaml"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: opened non-blocking, refused
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path)


def test_binary_junk_is_a_config_error(tmp_path):
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(ConfigError, match=r"junk\.yaml: not UTF-8"):
        load_config(junk)


def test_the_alias_bomb_of_the_issue_stays_within_a_small_memory_limit(tmp_path):
    """In a process limited to 1 GiB of address space (the unbounded loader grew to 7.8 GB on this file)."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(levels=10, width=10))
    assert bomb.stat().st_size < 4096
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from inspector.config import ConfigError, load_config
        try:
            load_config({str(bomb)!r})
        except ConfigError as exc:
            print(exc)
            sys.exit(0)
        sys.exit(1)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "anchors and aliases are not allowed" in result.stdout


# ----------------------------------------------------------------------------- every number has a range


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        for sub in _walk(field.annotation):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                _models(sub, seen)


def _walk(annotation):
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _walk(arg)


def _numbers(annotation, bounds: set[str]):
    """(type, bound names) of every int/float reachable in an annotation, with the bounds on the way to it."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *meta = typing.get_args(annotation)
        names = set(bounds)
        for m in meta:
            for c in getattr(m, "metadata", [m]):
                names |= {b for b in ("ge", "gt", "le", "lt") if getattr(c, b, None) is not None}
        yield from _numbers(inner, names)
    elif origin is typing.Literal:
        return
    elif annotation in (int, float):
        yield annotation, bounds
    else:
        for arg in typing.get_args(annotation):
            yield from _numbers(arg, bounds if origin in (typing.Union, type(int | None)) else set())


EXEMPT = {
    # A GenICam feature takes what the device's node map allows (checked against it at start); the loader holds
    # integers to 64 bits and floats to finite values.
    (GenicamFeature, "value"),
}


def test_every_number_in_the_config_models_has_a_range():
    seen: set[type[BaseModel]] = set()
    _models(GatewayLineConfig, seen)
    _models(Config, seen)
    unbounded = []
    for model in seen:
        for name, field in model.model_fields.items():
            if (model, name) in EXEMPT:
                continue
            own = {b for c in field.metadata for b in ("ge", "gt", "le", "lt") if getattr(c, b, None) is not None}
            for kind, bounds in _numbers(field.annotation, own):
                if not ({"ge", "gt"} & bounds and {"le", "lt"} & bounds):
                    unbounded.append(f"{model.__name__}.{name} ({kind.__name__}: {sorted(bounds)})")
    assert not unbounded, "numbers without a lower and an upper bound:\n" + "\n".join(sorted(unbounded))


def test_floats_are_finite_in_every_config_model():
    seen: set[type[BaseModel]] = set()
    _models(GatewayLineConfig, seen)
    assert all(m.model_config.get("allow_inf_nan") is False for m in seen)


# ----------------------------------------------------------------------------------- generated files

# Fragments a hostile or careless file is made of, spliced into a valid file at random places.
FRAGMENTS = [
    "&a ",
    "*a",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "? ",
    "!!python/name:os.system ",
    "!!binary ",
    "!!set ",
    "<<: ",
    "9" * 30,
    "-0x" + "f" * 20,
    "1e400",
    ".nan",
    "-.inf",
    "0o777",
    "1:30:00",
    "2024-13-45",
    "\t",
    "\x00",
    "\ufeff",
    "'",
    '"',
    "\\u",
    "#",
    "%YAML 1.1\n---\n",
    "...\n",
    "---\n",
    "~",
]


@st.composite
def _spliced(draw) -> str:
    text = MINIMAL + "decision: {block_threshold: 0.5, ignore_regions: {polygons: [[[0, 0], [4, 0], [4, 4]]]}}\n"
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(FRAGMENTS) | st.text(max_size=8))
        text = text[:at] + piece * draw(st.integers(1, 50)) + text[at:]
    return text


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["synthetic", "folder", "genicam", "rec.onnx", "never", "tcp://127.0.0.1:5555"])
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=60,
)
_sections = st.fixed_dictionaries(
    {},
    optional={
        name: _values | st.dictionaries(st.sampled_from(sorted(_fields)), _values, max_size=6)
        for name, _fields in (
            ("source", ["kind", "width", "height", "rate_hz", "seed", "pool_size", "path", "cti", "features"]),
            ("models", ["recognizer", "segmenter", "segmenter_mode", "backend", "onnxruntime", "tensorrt"]),
            ("pipeline", ["ring_slots", "batch_size", "deadline_ms", "warmup_runs", "failsafe_result"]),
            ("decision", ["block_threshold", "min_area_px", "min_area_px_per_class", "ignore_regions"]),
            ("publish", ["broadcast", "actuator", "heartbeat_ms"]),
            ("metrics", ["enabled", "bind", "port"]),
            ("archive", ["enabled", "path", "quota_mb", "pass_fraction"]),
            ("gateway", ["daemon", "opcua", "modbus", "max_age_ms"]),
        )
    },
)


def _dumped(data: dict) -> str:
    return yaml.safe_dump(data, allow_unicode=True, default_flow_style=None)


def _loads_or_refuses(text: str) -> None:
    try:
        config = parse_config(text, "gen.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("gen.yaml"), str(exc)
    else:
        assert isinstance(config, Config)
        config.config_hash()  # what every verdict carries: a config that loads can be hashed
        config.model_dump(mode="json")  # and compared whole, as a reload does (gateway section included)


HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(_spliced())
def test_any_spliced_file_loads_or_is_one_config_error(text):
    _loads_or_refuses(text)


@HYPOTHESIS
@given(_sections)
def test_any_structure_loads_or_is_one_config_error(data):
    _loads_or_refuses(_dumped(data))


@HYPOTHESIS
@given(st.binary(max_size=512))
def test_any_bytes_load_or_are_one_config_error(tmp_path_factory, data):
    path = Path(tmp_path_factory.mktemp("bytes")) / "line.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))


def test_config_md_lists_every_range_as_the_models_have_it():
    from inspector.config import ranges_markdown
    from inspector.gateway.config import GatewayConfig

    text = (Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md").read_text()
    table = text.split("<!-- ranges: begin -->\n", 1)[1].split("<!-- ranges: end -->", 1)[0]
    expected = ranges_markdown() + ranges_markdown(GatewayConfig, "gateway.").split("\n", 2)[2]
    assert table == expected, "docs/CONFIG.md's range table is out of date: paste ranges_markdown() there"


def test_tune_reads_the_config_with_the_same_bounded_loader(tmp_path):
    from inspector.archive.tune import TuneError, apply_sets

    bomb = tmp_path / "line.yaml"
    bomb.write_text(alias_bomb(levels=10, width=10))
    with pytest.raises(TuneError, match="anchors and aliases are not allowed"):
        apply_sets(bomb, {"decision.block_threshold": 0.7})
