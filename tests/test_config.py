"""configs/reference.yaml documents every option at its default; bad files give field/line/value errors."""

import re
import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from inspector.config import Config, ConfigError, load_config, parse_config
from inspector.gateway.config import GatewayLineConfig

REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "reference.yaml"
# Set in the reference although their default is "absent": the default segmenter_mode (gated) needs one, and an
# OPC UA server nobody can log in to is refused.
NOT_AT_DEFAULT = {"models.segmenter", "gateway.opcua.users"}
# The reference is read as the gateway reads it, so its `gateway:` section (opaque to the daemon) is typed too.
ROOT = GatewayLineConfig


def _models(model: type[BaseModel], seen: set | None = None) -> set[type[BaseModel]]:
    """Every config model reachable from `model` (unions included)."""
    seen = set() if seen is None else seen
    if model in seen:
        return seen
    seen.add(model)

    def walk(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _models(annotation, seen)
        for arg in getattr(annotation, "__args__", ()):
            walk(arg)
        for meta in getattr(annotation, "__metadata__", ()):
            walk(meta)

    for field in model.model_fields.values():
        walk(field.annotation)
    return seen


def _alternative_sources(text: str) -> list[str]:
    """The commented-out `source:` sections at the end of the reference, uncommented."""
    tail = text.split("other source kinds", 1)[1]
    blocks = re.split(r"^# source:\n", tail, flags=re.M)[1:]
    out = []
    for block in blocks:
        lines = ["source:"]
        for line in block.splitlines():
            if not line.startswith("#   "):
                break
            lines.append(line[2:])
        out.append("\n".join(lines))
    return out


def _reference_variants() -> list[tuple[str, Config]]:
    text = REFERENCE.read_text()
    main = parse_config(text, str(REFERENCE), ROOT)
    assert parse_config(text, str(REFERENCE)).gateway is not None  # and the daemon accepts the same file
    variants = [("synthetic", main)]
    data = yaml.safe_load(text)
    for block in _alternative_sources(text):
        data["source"] = yaml.safe_load(block)["source"]
        cfg = parse_config(yaml.safe_dump(data), f"{REFERENCE} ({data['source']['kind']})", ROOT)
        variants.append((data["source"]["kind"], cfg))
    return variants


def _check_complete(model: BaseModel, path: str, defaults: BaseModel | None, found: set, problems: list) -> None:
    """Every field written out, at its default. `defaults` is the parent field's default instance, when it has
    one (publish.actuator defaults to sndhwm 100, not SocketConfig's 1000)."""
    cls = type(model)
    found.add(cls)
    for name, field in cls.model_fields.items():
        where = f"{path}.{name}".lstrip(".")
        if name not in model.model_fields_set:
            problems.append(f"{where} is not written out in the reference")
            continue
        value = getattr(model, name)
        if defaults is not None:
            default, has_default = getattr(defaults, name), True
        else:
            has_default = not field.is_required()
            default = field.get_default(call_default_factory=True) if has_default else None
        # Sections are compared leaf by leaf below (a section differs when any of its leaves does).
        if has_default and where not in NOT_AT_DEFAULT and not isinstance(value, BaseModel) and value != default:
            problems.append(f"{where} is {value!r} in the reference, the default is {default!r}")
        if isinstance(value, BaseModel):
            _check_complete(value, where, default if isinstance(default, BaseModel) else None, found, problems)


def test_reference_validates_and_lists_every_option_at_its_default():
    found: set = set()
    problems: list[str] = []
    variants = _reference_variants()
    assert [kind for kind, _ in variants] == ["synthetic", "folder", "genicam"]
    for _, cfg in variants:
        _check_complete(cfg, "", None, found, problems)
    assert not problems, "\n".join(problems)
    # Models that the reference can only show as an example in a comment (list items of an empty default).
    text = REFERENCE.read_text()
    for model in _models(ROOT) - found:
        for name in model.model_fields:
            assert re.search(rf"\b{name}:", text), f"{model.__name__}.{name} is not documented in the reference"


def test_every_field_has_a_description():
    missing = [
        f"{model.__name__}.{name}"
        for model in _models(ROOT)
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert not missing


# ------------------------------------------------------------------------------------ error messages

MINIMAL = """\
source:
  kind: synthetic
models:
  recognizer:
    path: rec.onnx
  segmenter_mode: never
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "line1.yaml")
    return info.value


def test_minimal_config_is_valid():
    cfg = parse_config(MINIMAL)
    assert cfg.source.kind == "synthetic" and cfg.models.segmenter is None


def test_malformed_yaml_names_the_line():
    err = _error(MINIMAL + "decision:\n  block_threshold: [0.5\n")
    assert str(err).startswith("line1.yaml:")
    assert "not valid YAML" in str(err)
    assert err.issues[0].line in (8, 9)  # PyYAML reports where it noticed: the end of the flow sequence


def test_wrong_type_names_field_line_and_value():
    err = _error(MINIMAL + "decision:\n  block_threshold: high\n")
    (issue,) = err.issues
    assert (issue.path, issue.line, issue.value) == ("decision.block_threshold", 8, "high")
    assert (
        str(err) == "line1.yaml:8: decision.block_threshold: Input should be a valid number, unable to parse "
        "string as a number (got 'high')"
    )


def test_out_of_range_value_names_field_line_value_and_limit():
    err = _error(MINIMAL + "pipeline:\n  batch_size: 4\n  deadline_ms: -5\n")
    assert str(err) == "line1.yaml:9: pipeline.deadline_ms: Input should be greater than or equal to 1 (got -5)"


def test_unknown_key_names_the_allowed_ones():
    err = _error(MINIMAL + "decision:\n  blok_threshold: 0.7\n")
    (issue,) = err.issues
    assert (issue.path, issue.line, issue.value) == ("decision.blok_threshold", 8, 0.7)
    assert "unknown field; allowed: block_threshold, ignore_regions, max_defects_reported" in issue.message


def test_unknown_key_inside_a_source_kind():
    err = _error(MINIMAL.replace("  kind: synthetic\n", "  kind: folder\n  path: img\n  rate: 5\n"))
    (issue,) = err.issues
    assert (issue.path, issue.line, issue.value) == ("source.rate", 4, 5)
    assert "allowed:" in issue.message and "rate_hz" in issue.message


def test_duplicate_key_names_both_lines():
    err = _error(MINIMAL + "decision:\n  min_area_px: 10\n  pixel_threshold: 0.4\n  min_area_px: 30\n")
    (issue,) = err.issues
    assert (issue.path, issue.line) == ("decision.min_area_px", 10)
    assert "duplicate key (first defined on line 8)" in issue.message


def test_wrong_choice_lists_the_allowed_values():
    err = _error(MINIMAL.replace("kind: synthetic\n", "kind: synthetic\n  pixel_format: mono16\n"))
    (issue,) = err.issues
    assert (issue.path, issue.line, issue.value) == ("source.pixel_format", 3, "mono16")
    assert "'mono8', 'rgb8' or 'bgr8'" in issue.message


def test_unknown_or_missing_source_kind_points_at_kind():
    err = _error(MINIMAL.replace("kind: synthetic", "kind: camera"))
    assert (
        str(err) == "line1.yaml:2: source.kind: unknown kind; allowed: 'synthetic', 'folder', 'genicam' (got 'camera')"
    )
    (issue,) = _error(MINIMAL.replace("kind: synthetic", "width: 100")).issues
    assert (issue.path, issue.line, issue.has_value) == ("source.kind", 1, False)
    assert "required field is missing" in issue.message


def test_own_validator_messages_read_plainly():
    err = _error(MINIMAL + "archive:\n  enabled: true\n")
    assert str(err) == "line1.yaml:7: archive: path is required when the archive is enabled"
    err = _error(MINIMAL + "decision:\n  min_area_px_per_class: {pit: -3}\n")
    assert str(err).startswith("line1.yaml:8: decision.min_area_px_per_class.pit: Input should be greater than or")


def test_missing_required_field_and_cross_field_rule():
    err = _error("source:\n  kind: folder\nmodels:\n  recognizer:\n    path: rec.onnx\n")
    messages = {issue.path: issue for issue in err.issues}
    assert messages["source.path"].message == "required field is missing" and messages["source.path"].line == 1
    assert "no segmenter is configured" in messages["models"].message and messages["models"].line == 3


def test_nested_list_errors_point_at_the_item():
    err = _error(MINIMAL + "decision:\n  ignore_regions:\n    polygons:\n      - [[0, 0], [10, 0]]\n")
    (issue,) = err.issues
    assert issue.path == "decision.ignore_regions.polygons" and issue.line == 9
    assert "polygon 0 has 2 points" in issue.message


def test_several_errors_are_reported_together():
    err = _error(MINIMAL + "decision:\n  block_threshold: 2\n  pixel_threshold: -1\n")
    assert [(i.path, i.line) for i in err.issues] == [("decision.block_threshold", 8), ("decision.pixel_threshold", 9)]


def test_empty_and_non_mapping_files():
    assert "file is empty" in str(_error(""))
    assert "top level must be a mapping" in str(_error("- a\n- b\n"))


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"line:\n  name: \xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.yaml")


def test_config_hash_changes_with_a_threshold_only():
    a = parse_config(MINIMAL)
    b = parse_config(MINIMAL + "\n# a comment changes nothing\n")
    c = parse_config(MINIMAL + "decision:\n  block_threshold: 0.6\n")
    assert a.config_hash() == b.config_hash() != c.config_hash()
