"""The runtime bundle: everything a batch is decided with, built, validated and retired together.

A `Runtime` holds the config and its hash, the loaded models (backend, manifest, sha256), their preprocessors,
the `Decider`, the fail-safe result, the deadline and the batch size. The inference thread reads one per batch,
so a batch is decided by exactly one config; a reload builds a new one beside the running one and swaps it in.

One validation, three callers. `build()` is what `inspector check-config`, start-up and every SIGHUP reload run:

1. the config file: YAML, types, ranges, distinct endpoints (all in `inspector.config`, so `load_config`
   refuses them with file:line before anything here runs);
2. the source section, statically: a replay folder that exists, GenTL producer files that exist (opening the
   camera is left to start-up: check-config must not take a camera away from a running line);
3. each model: manifest beside it and its SHA-256, what the config expects of it (task, classes, input), the
   model opened in the configured backend (a truncated or corrupt file fails here), the graph's input checked
   against the manifest by the backend, then one real inference on a blank frame through the real
   preprocessing, whose outputs must have the manifest's shapes — the recognizer's grid (input / block size),
   the segmenter's class count and resolution — and finite probabilities in [0, 1]; then every batch size's
   warm-up runs;
4. the decision section against the models: ignore mask, per-class areas naming the segmenter's classes, and one
   decision made on the blank frame's outputs.

Every problem found is reported, one line each (a broken recognizer does not hide a broken segmenter).
`StartupError.code` is the exit status start-up uses: 2 config, 3 model/backend, 4 source. `check-config`
reports the same lines and exits 2. A reload reuses the models whose backend, file hash, backend options and
batch size are unchanged (they were checked when they were loaded) and checks the rest exactly as above.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.archive import FrameArchive
from inspector.archive.writer import ArchiveContext, ArchiveWriter
from inspector.backends import Backend, BackendError, BackendSettings, backend_class
from inspector.capacity import Capacity, measure
from inspector.config import Config, ConfigError, ModelSpec, load_config, resolve_path
from inspector.decision import Decider, load_ignore_mask
from inspector.frames import CHANNELS, Result
from inspector.manifest import ManifestError, ModelManifest, check_expectations, read_manifest
from inspector.outputs import OutputGuard, describe_scores
from inspector.preprocess import Preprocessor
from inspector.sources import SourceError, source_class

# Sections whose change needs a restart: the ring, the sockets, the exporter and the source are built once, and
# `line` names the ZeroMQ topic and the metrics labels. A reload touching any of them is refused as a whole.
RESTART_ONLY = (
    "line",
    "source",
    "publish",
    "metrics",
    "pipeline.ring_slots",
    "pipeline.preprocess_threads",
    "archive.enabled",
    "archive.path",
    "archive.pool_slots",
)

EXIT_CONFIG, EXIT_MODEL, EXIT_SOURCE = 2, 3, 4

InputKey = tuple[int, int, int, str, str, str, float | None, str]


class StartupError(Exception):
    """Cannot start (or reload): `code` is the process exit status (2 config, 3 model/backend, 4 source/publish).

    `problems` lists every problem found, one line each; `str()` is those lines joined.
    """

    def __init__(self, code: int, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.code = code
        self.problems = problems if problems is not None else message.splitlines()


@dataclass(eq=False)
class LoadedModel:
    """One backend with its model, keyed so that a reload reuses it when nothing about it changed."""

    role: str
    key: str  # backend, path, file hash, settings and batch: equal keys = the very same loaded model
    path: Path
    manifest: ModelManifest
    backend: Backend

    @property
    def sha256(self) -> str:
        return self.manifest.sha256


@dataclass(eq=False)
class Runtime:
    """Everything a batch is decided with, built together and swapped together (hot reload is atomic)."""

    config: Config
    config_hash: str
    recognizer: LoadedModel
    segmenter: LoadedModel | None  # None when segmenter_mode is never
    rec_pre: Preprocessor
    seg_pre: Preprocessor | None
    seg_shares_input: bool  # same input spec: a segmenter row is a copy of the recognizer row, not a 2nd resize
    decider: Decider
    model_hashes: dict[str, str]
    mode: str  # always / gated / never
    failsafe: Result  # what a frame that could not be inspected gets
    deadline_ns: int
    batch_size: int
    archive: FrameArchive | None = None  # the archive's hand-over for this runtime; None when archiving is off
    capacity: Capacity | None = None  # measured after warm-up (inspector/capacity.py); None from check-config

    def models(self) -> list[LoadedModel]:
        return [m for m in (self.recognizer, self.segmenter) if m is not None]

    @property
    def rec_key(self) -> InputKey:
        """What the recognizer's input depends on: frames preprocessed for an equal key can be reused."""
        return input_key(self.recognizer.manifest)


def input_key(m: ModelManifest) -> InputKey:
    """Everything a model's input row depends on: rows made for an equal key are the same pixels."""
    pre = m.preprocessing
    return (m.input.height, m.input.width, m.input.channels, pre.color, pre.resize, pre.fit, pre.scale, pre.pad)


def backend_settings(config: Config) -> BackendSettings:
    """ONNX Runtime takes its own section; both GPU backends take models.tensorrt."""
    return config.models.onnxruntime if config.models.backend == "onnxruntime" else config.models.tensorrt


def load_model_manifest(backend: str, path: Path, settings: BackendSettings, batch: int) -> ModelManifest:
    """The one place where loading a manifest depends on the backend (engines say how to rebuild them)."""
    if backend == "tensorrt":
        from inspector.backends.tensorrt import read_engine_manifest
        from inspector.config import TensorRTSettings

        assert isinstance(settings, TensorRTSettings)
        return read_engine_manifest(path, settings, batch)
    return read_manifest(path)


# ------------------------------------------------------------------------------------------- validation


class _Problems:
    """Problems found while building, each with the exit status it would give at start-up."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    def add(self, code: int, message: str) -> None:
        self.items.append((code, " ".join(message.split())))  # one line each, whatever the library wrote

    def raise_if_any(self) -> None:
        if self.items:
            lines = [m for _, m in self.items]
            raise StartupError(self.items[0][0], "\n".join(lines), lines)


def source_problems(config: Config, config_file: str | Path, problems: _Problems) -> None:
    """What can be checked about the source without opening it (a camera may be in use by the running daemon)."""
    try:
        _source_files(config, config_file, problems)
    except Exception as exc:  # e.g. a path naming a user that does not exist (~nobody/x)
        problems.add(EXIT_SOURCE, f"source: {_why(exc)}")


def _why(exc: BaseException) -> str:
    """An exception nobody foresaw, in one line that names its type (the message alone can be empty)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _source_files(config: Config, config_file: str | Path, problems: _Problems) -> None:
    src = config.source
    try:
        source_class(src.kind)  # its library is installed (the camera extra for genicam)
    except SourceError as exc:
        problems.add(EXIT_SOURCE, f"source.kind {src.kind}: {exc}")
    if src.kind == "folder":
        folder = resolve_path(config_file, src.path)
        if not folder.is_dir():
            problems.add(EXIT_SOURCE, f"source.path: {folder} is not a directory")
    elif src.kind == "genicam":
        for cti in src.cti:
            path = Path(cti).expanduser()
            if not path.is_file():
                problems.add(EXIT_SOURCE, f"source.cti: GenTL producer {path} does not exist")


def _model_key(config: Config, path: Path, sha256: str) -> str:
    settings = backend_settings(config)
    return json.dumps(
        [config.models.backend, str(path), sha256, settings.model_dump(mode="json"), config.pipeline.batch_size]
    )


def _open_model(
    role: str, spec: ModelSpec, config: Config, config_file: str | Path, previous: Runtime | None
) -> tuple[LoadedModel, bool]:
    """-> (model, newly opened). Raises StartupError(3) with the reason in words."""
    path = resolve_path(config_file, spec.path)
    where = f"models.{role} ({path})"
    settings = backend_settings(config)
    batch = config.pipeline.batch_size
    try:
        manifest = load_model_manifest(config.models.backend, path, settings, batch)
        check_expectations(
            manifest, task=role, expect_classes=spec.expect_classes, expect_input=spec.expect_input, where=where
        )
    except (ManifestError, BackendError) as exc:
        raise StartupError(EXIT_MODEL, f"{where}: {exc}" if where not in str(exc) else str(exc)) from None
    except Exception as exc:  # e.g. an engine file a TensorRT library cannot even read the header of
        raise StartupError(EXIT_MODEL, f"{where}: cannot read the model's manifest: {_why(exc)}") from None
    key = _model_key(config, path, manifest.sha256)
    if previous is not None:
        for old in previous.models():
            if old.key == key and old.role == role:
                return old, False
    try:
        backend = backend_class(config.models.backend)(path, manifest, settings, batch)
    except BackendError as exc:
        raise StartupError(EXIT_MODEL, f"{where}: {exc}") from None
    except Exception as exc:  # a backend library's own exception types: still a model problem, said plainly
        raise StartupError(EXIT_MODEL, f"{where}: {config.models.backend} cannot load the model: {exc}") from None
    return LoadedModel(role, key, path, manifest, backend), True


def _preprocessor(model: LoadedModel, config: Config) -> Preprocessor:
    pre = Preprocessor.for_model(model.manifest, config.pipeline.batch_size, config.source.pixel_format)
    buf = model.backend.input_buffer()
    if buf.shape[1:] != pre.buffer.shape[1:] or buf.shape[0] < config.pipeline.batch_size or buf.dtype != np.uint8:
        raise StartupError(
            EXIT_MODEL, f"models.{model.role}: backend input {buf.shape} does not fit {pre.buffer.shape}"
        )
    # Preprocess straight into the backend's input: no copy between preprocessing and inference.
    pre.buffer = buf
    return pre


def expected_output(manifest: ModelManifest) -> tuple[str, tuple[int, ...]]:
    """The output the pipeline reads and its shape per frame, from the manifest's input, grid and classes."""
    if manifest.task == "recognizer":
        return "block_scores", manifest.grid
    return "pixel_scores", (len(manifest.classes), manifest.input.height, manifest.input.width)


def check_outputs(model: LoadedModel, outputs: dict[str, np.ndarray], n: int) -> None:
    """The outputs of one real inference of n frames against the manifest; raises StartupError(3)."""
    m = model.manifest
    where = f"models.{model.role} ({model.path})"
    name, per_frame = expected_output(m)
    declared = m.output(name).shape[1:]
    if any(isinstance(d, int) and d != e for d, e in zip(declared, per_frame, strict=False)) or len(declared) != len(
        per_frame
    ):
        what = "grid (input / block_size)" if m.task == "recognizer" else "classes and input size"
        raise StartupError(
            EXIT_MODEL,
            f"{where}: the manifest declares {name} {m.output(name).shape} but its {what} "
            f"mean (N, {', '.join(map(str, per_frame))})",
        )
    if name not in outputs:
        raise StartupError(EXIT_MODEL, f"{where}: the model produced no {name!r} output (got {sorted(outputs)})")
    out = outputs[name]
    if tuple(out.shape) != (n, *per_frame):
        detail = (
            f"{len(m.classes)} classes {m.classes}"
            if m.task == "segmenter"
            else f"a {per_frame[0]}x{per_frame[1]} grid of {m.block_size}-pixel blocks"
        )
        raise StartupError(
            EXIT_MODEL,
            f"{where}: the graph's {name} for {n} frame(s) is {tuple(out.shape)}, the manifest means "
            f"{(n, *per_frame)} ({detail}); the manifest does not describe this model",
        )
    if out.dtype.kind != "f":
        raise StartupError(EXIT_MODEL, f"{where}: {name} is {out.dtype}, scores must be floating point")
    # The hot path's own check (inspector.outputs): NaN, Inf, out of [0, 1], segmenter classes not summing to 1.
    guard = OutputGuard(m.task, name, per_frame, class_sums=m.task == "segmenter")
    bad = np.flatnonzero(guard.check(out))
    if bad.size:
        raise StartupError(
            EXIT_MODEL,
            f"{where}: on a blank frame, {name}: {describe_scores(out[bad[0]], guard.class_sums)}; scores must "
            "be probabilities in [0, 1] (softmax folded into the exported graph): the model or its backend is broken",
        )


def _blank_frame(config: Config) -> np.ndarray:
    src = config.source
    return np.zeros((src.height, src.width, CHANNELS[src.pixel_format]), np.uint8)


def _first_inference(model: LoadedModel, pre: Preprocessor, blank: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """One frame of real inference on a blank frame through the real preprocessing, then the full batch."""
    where = f"models.{model.role} ({model.path})"
    try:
        for i in range(batch):
            pre.put(i, blank)
        one = {k: v.copy() for k, v in model.backend.run(1).items()}
        check_outputs(model, one, 1)
        check_outputs(model, model.backend.run(batch), batch)
    except StartupError:
        raise
    except Exception as exc:  # the backend library failed to run a well-formed input: a model problem
        raise StartupError(EXIT_MODEL, f"{where}: inference on a blank frame failed: {exc}") from None
    return one


def warm_up(model: LoadedModel, runs: int, batch: int) -> None:
    """Run the model so that the first real frame does not pay for lazy initialisation."""
    for _ in range(runs):
        model.backend.run(batch)


def batch_work(rt: Runtime) -> Callable[[int], None]:
    """The inference thread's work for n blank frames (capacity.measure times it): the recognizer's
    preprocessing of every row, the recognizer, the batch screen, and the segmenter where it sees every frame."""
    blank = _blank_frame(rt.config)
    seg_every = rt.mode == "always"

    def run(n: int) -> None:
        for i in range(n):
            rt.rec_pre.put(i, blank)
        rt.decider.screen(rt.recognizer.backend.run(n)["block_scores"])
        if seg_every and rt.seg_pre is not None and rt.segmenter is not None:
            for i in range(n):
                rt.seg_pre.put(i, blank)
            rt.segmenter.backend.run(n)

    return run


def segment_work(rt: Runtime) -> Callable[[int], None] | None:
    """A gated segmenter's work for n blank frames (None in the other modes): what a batch costs on top of
    batch_work when every frame of it is flagged."""
    if rt.mode != "gated" or rt.seg_pre is None or rt.segmenter is None:
        return None
    blank, seg_pre, segmenter = _blank_frame(rt.config), rt.seg_pre, rt.segmenter

    def run(n: int) -> None:
        for i in range(n):
            seg_pre.put(i, blank)
        segmenter.backend.run(n)

    return run


def build(
    config: Config,
    config_file: str | Path,
    previous: Runtime | None = None,
    archive: ArchiveWriter | None = None,
    measure_capacity: bool = True,
) -> Runtime:
    """The one validation (see the module docstring) and the runtime it yields. Raises StartupError listing
    every problem found; nothing it opened survives a failure. Models unchanged since `previous` are reused.
    With `archive`, the runtime gets the archive's hand-over, its pool shaped for these models' outputs.
    With `measure_capacity`, the frames/s these models can inspect are measured after warm-up (on a reload that
    reuses a model, `previous`'s measurement stands: see _unchanged_capacity)."""
    problems = _Problems()
    source_problems(config, config_file, problems)
    mode = config.models.segmenter_mode
    specs: dict[str, ModelSpec] = {"recognizer": config.models.recognizer}
    if mode != "never":
        assert config.models.segmenter is not None  # the config validator guarantees it
        specs["segmenter"] = config.models.segmenter
    batch = config.pipeline.batch_size
    why = backend_class(config.models.backend).unavailable(backend_settings(config))
    if why is not None:  # no model can be opened: say so once, not once per model
        problems.add(EXIT_MODEL, f"models.backend: {why}")
        specs = {}
    opened: list[LoadedModel] = []  # newly opened here: closed again if the build fails
    models: dict[str, LoadedModel] = {}
    pres: dict[str, Preprocessor] = {}
    firsts: dict[str, dict[str, np.ndarray]] = {}
    try:
        blank = _blank_frame(config)
        for role, spec in specs.items():
            try:
                model, new = _open_model(role, spec, config, config_file, previous)
                if new:
                    opened.append(model)
                pres[role] = _preprocessor(model, config)
                if new:
                    firsts[role] = _first_inference(model, pres[role], blank, batch)
                    warm_up(model, config.pipeline.warmup_runs, batch)
                models[role] = model
            except StartupError as exc:
                for line in exc.problems:
                    problems.add(exc.code, line)
            except Exception as exc:  # not foreseen above: still this model's problem, in one line
                problems.add(EXIT_MODEL, f"models.{role} ({spec.path}): {_why(exc)}")
        ignore_mask = _ignore_mask(config, config_file, problems)
        decider = _decider(config, models, firsts, ignore_mask, problems)
        problems.raise_if_any()
        assert decider is not None
        recognizer, segmenter = models["recognizer"], models.get("segmenter")
        shares = segmenter is not None and input_key(recognizer.manifest) == input_key(segmenter.manifest)
    except BaseException:
        for model in opened:  # nothing half-built survives a failed build
            model.backend.close()
        raise
    sink = None
    if archive is not None:
        # Allocated here, off the hot path: the pool for these models' score maps.
        context = ArchiveContext.build(
            config, config.config_hash(), recognizer.manifest, segmenter.manifest if segmenter else None, ignore_mask
        )
        sink = archive.bind(context)
    runtime = Runtime(
        config=config,
        config_hash=config.config_hash(),
        recognizer=recognizer,
        segmenter=segmenter,
        rec_pre=pres["recognizer"],
        seg_pre=pres.get("segmenter"),
        seg_shares_input=shares,
        decider=decider,
        model_hashes={m.role: m.sha256 for m in (recognizer, segmenter) if m is not None},
        mode=mode,
        failsafe=config.pipeline.failsafe_result,
        deadline_ns=int(config.pipeline.deadline_ms * 1e6),
        batch_size=batch,
        archive=sink,
    )
    runtime.capacity = _capacity(previous, runtime) if measure_capacity else None
    return runtime


def _capacity(previous: Runtime | None, runtime: Runtime) -> Capacity:
    """The frames/s these models can inspect: measured now, or the previous runtime's (_unchanged_capacity)."""
    unchanged = _unchanged_capacity(previous, runtime)
    if unchanged is not None:
        return unchanged
    return measure(batch_work(runtime), runtime.batch_size, segment=segment_work(runtime))


def _unchanged_capacity(previous: Runtime | None, runtime: Runtime) -> Capacity | None:
    """On a reload that reuses a model, the previous measurement: a reused model is running batches of the live
    pipeline on its own input buffer, so it must not be run here. The pipeline's running estimate of the batch
    time corrects the figure from the first batches on (and a reload that changes every model measures anew)."""
    if previous is None:
        return None
    if not {id(m) for m in previous.models()} & {id(m) for m in runtime.models()}:
        return None
    return previous.capacity


def _ignore_mask(config: Config, config_file: str | Path, problems: _Problems) -> np.ndarray | None:
    if not config.decision.ignore_regions.mask:
        return None
    where = "decision.ignore_regions.mask"
    try:
        mask_path = resolve_path(config_file, config.decision.ignore_regions.mask)
        if not mask_path.is_file():  # said here: OpenCV would also print its own warning on stderr
            problems.add(EXIT_CONFIG, f"{where}: {mask_path} does not exist")
            return None
        return load_ignore_mask(mask_path, (config.source.height, config.source.width))
    except Exception as exc:  # unreadable, not an image (OpenCV's own error types too), the wrong size
        message = str(exc)
        problems.add(EXIT_CONFIG, message if message.startswith(where) else f"{where}: {message}")
        return None


def _decider(
    config: Config,
    models: dict[str, LoadedModel],
    firsts: dict[str, dict[str, np.ndarray]],
    ignore_mask: np.ndarray | None,
    problems: _Problems,
) -> Decider | None:
    """The decision section against the models' manifests, and one decision on the blank frame's outputs."""
    frame_size = (config.source.height, config.source.width)
    if config.decision.ignore_regions.mask and ignore_mask is None:
        return None  # its problem is reported
    wanted = 1 if config.models.segmenter_mode == "never" else 2
    if len(models) != wanted:
        return None  # a model problem is already reported; the decision cannot be checked without it
    recognizer, segmenter = models["recognizer"], models.get("segmenter")
    try:
        decider = Decider(
            config.decision, frame_size, recognizer.manifest, segmenter.manifest if segmenter else None, ignore_mask
        )
    except ValueError as exc:
        problems.add(EXIT_CONFIG, f"decision: {exc}")
        return None
    if "recognizer" in firsts:
        block = firsts["recognizer"]["block_scores"][0]
        pixels = firsts["segmenter"]["pixel_scores"][0] if "segmenter" in firsts else None
        try:
            decider.decide(block, pixels)
        except Exception as exc:  # shapes were checked; anything left is a decision/model mismatch in words
            problems.add(EXIT_MODEL, f"decision on a blank frame's scores failed: {exc}")
            return None
    return decider


def retire(old: Runtime, current: Runtime | None) -> None:
    """Close the models of a runtime no longer in use, except those the current one reuses."""
    keep = {id(m) for m in current.models()} if current is not None else set()
    for model in old.models():
        if id(model) not in keep:
            model.backend.close()


def check(config_file: str | Path) -> list[str]:
    """`inspector check-config`: the problems start-up would refuse (empty = it would start), one line each.

    The same `build()` as start-up and reload, so it opens the models and runs them once (seconds, and the
    memory of one more set of models while it runs); it binds no socket and opens no camera.
    """
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        return str(exc).splitlines()
    problems = []
    try:
        runtime = build(config, config_file, measure_capacity=False)
    except StartupError as exc:
        problems = [f"{config_file}: {line}" for line in exc.problems]
    except Exception as exc:  # build() reports every foreseen problem; anything else is still one line
        problems = [f"{config_file}: {_why(exc)}"]
    else:
        retire(runtime, None)
    if config.archive.enabled and config.archive.path:
        # Only check-config refuses an unusable archive directory: the daemon starts without it, says so (log,
        # event, metric) and retries, because inspecting comes before keeping evidence.
        from inspector.archive.store import check_directory

        where = resolve_path(config_file, config.archive.path)
        problem = check_directory(where, config.line.name, config.line.camera)
        if problem:
            problems.append(f"{config_file}: archive.path: {problem}")
    if config.publish.curve is not None:  # the keys start-up would read (as this user: run it as the service's)
        from inspector.curve import CurveKeyError, ServerKeys

        c = config.publish.curve
        try:
            ServerKeys.load(resolve_path(config_file, c.secret_key), resolve_path(config_file, c.authorised_keys))
        except CurveKeyError as exc:
            problems.append(f"{config_file}: publish.curve: {exc}")
    if config.gateway is not None:  # the daemon ignores the section; the gateway reading this file would not
        from inspector.gateway.config import load_gateway_config

        try:
            load_gateway_config(config_file)
        except ConfigError as exc:
            problems += str(exc).splitlines()
    return problems


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Dotted names of the restart-only settings that differ between two configs (empty: reloadable)."""
    changed: list[str] = []
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    for name in RESTART_ONLY:
        va: Any = a
        vb: Any = b
        for part in name.split("."):
            va, vb = va.get(part), vb.get(part)
        if va != vb:
            changed.extend(_diff_paths(name, va, vb))
    return changed


def _diff_paths(prefix: str, a: Any, b: Any) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.extend(_diff_paths(f"{prefix}.{key}", a.get(key), b.get(key)))
        return out
    return [prefix]
