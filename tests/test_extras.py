"""Every install works alone: a real, isolated venv (python -m venv, no system site packages) with only the base
package, and one with each extra, each importing every module that install promises and running the commands it
offers; what an install lacks is refused in one clear line, never a traceback.

The venvs live in a cache (INSPECTOR_TEST_VENVS, default ~/.cache/inspector/test-venvs), one per extra, keyed by
the Python version and the extra's dependencies in pyproject.toml: made once (a few minutes the first time, from
the package registries), reused after. The package itself is built once per test session as a wheel from this
checkout and installed into each venv without its dependencies, so the packaging (package discovery, entry
points, `python -m` mains) is what is tested, not the source tree. tensorrt (several GB of wheels) is not
installed: the gpu venv holds cuda-python only, and a TensorRT config there and in the base venv must give one
clear line. Skips, saying why, when the registries cannot be reached.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "inspector"
CACHE = Path(os.environ.get("INSPECTOR_TEST_VENVS", Path.home() / ".cache" / "inspector" / "test-venvs"))

pytestmark = pytest.mark.timeout(1200)

# What each install is: extras of pyproject.toml, or explicit requirements where an extra cannot be installed.
INSTALLS: dict[str, list[str]] = {
    "base": [],
    "camera": ["camera"],
    "build": ["build"],
    "gpu": [],  # + cuda-python below; tensorrt is left out (several GB)
    "train": ["train"],
}
EXTRA_REQUIREMENTS = {"gpu": ["cuda-python>=12"]}

# The modules each install promises (module-name prefixes of the package, as tests/test_architecture.py maps
# their third-party imports); the base install promises every module under none of these.
PROMISED = {
    "camera": ("inspector.sources.genicam", "inspector.camera_cli"),
    "build": ("inspector.build",),
    "gpu": ("inspector.backends.tensorrt", "inspector.backends.cuda", "inspector.backends.gpu_"),
    "train": ("inspector.train",),
}
UNREACHABLE = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
)


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # running it is the test, not importing it
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def promised(install: str) -> list[str]:
    extras = [p for prefixes in PROMISED.values() for p in prefixes]
    if install == "base":
        return [m for m in modules() if not m.startswith(tuple(extras))] + ["inspector.backends.tensorrt"]
    return [m for m in modules() if m.startswith(PROMISED[install])]


def requirements(install: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in INSTALLS[install]:
        reqs += project["optional-dependencies"][extra]
    return reqs + EXTRA_REQUIREMENTS.get(install, [])


def _run(args: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, **kwargs)


def _pip(venv: Path, *args: str) -> None:
    result = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", *args], timeout=1100)
    if result.returncode != 0:
        text = result.stdout + result.stderr
        if any(marker in text for marker in UNREACHABLE):
            pytest.skip(f"the package registries cannot be reached: {text.strip().splitlines()[-1]}")
        raise AssertionError(f"pip install {' '.join(args)} failed:\n{text[-3000:]}")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """This checkout as a wheel, built once per session (no build isolation: setuptools of the running Python)."""
    out = tmp_path_factory.mktemp("wheel")
    result = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, ROOT], timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("inspector-*.whl")
    return built


def venv_for(install: str, wheel: Path) -> Path:
    """The cached venv of one install, made if its dependencies changed; this checkout's wheel put into it."""
    reqs = requirements(install)
    key = hashlib.sha256(f"{sys.version_info[:2]}\n{sorted(reqs)}".encode()).hexdigest()[:12]
    venv = CACHE / f"{install}-py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    if not (venv / "ready").exists():
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        result = _run([sys.executable, "-m", "venv", venv], timeout=300)  # isolated: no system site packages
        assert result.returncode == 0, result.stderr
        _pip(venv, *reqs)
        (venv / "ready").write_text("\n".join(reqs) + "\n")
    _pip(venv, "--no-deps", "--force-reinstall", str(wheel))
    return venv


def _python(venv: Path, code: str) -> subprocess.CompletedProcess:
    return _run([venv / "bin" / "python", "-c", code], timeout=300, cwd=venv)  # cwd: not the checkout


def _one_clear_line(result: subprocess.CompletedProcess) -> str:
    """The refusal of a command: no traceback and a single error line (log lines before it are fine)."""
    text = result.stderr
    assert "Traceback" not in text and "Error:" not in text.replace("ERROR", ""), text
    errors = [line for line in text.splitlines() if line.strip() and "INFO" not in line and "WARNING" not in line]
    assert len(errors) == 1, text
    return errors[0]


@pytest.mark.parametrize("install", list(INSTALLS))
def test_each_install_imports_every_module_it_promises(install, wheel):
    venv = venv_for(install, wheel)
    names = promised(install)
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "import inspector\n"
        "print(inspector.__file__)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'harvesters', 'tensorrt'}))\n"
    )
    result = _python(venv, code)
    assert result.returncode == 0, result.stdout + result.stderr
    where, heavy = result.stdout.splitlines()
    assert str(venv) in where, "imported the checkout, not the installed package"
    expected = {"base": [], "camera": ["harvesters"], "build": ["onnx"], "gpu": [], "train": ["onnx", "torch"]}
    assert heavy == str(expected[install]), f"{install} loaded {heavy}"


def _tensorrt_config(tmp_path: Path) -> Path:
    text = (ROOT / "configs" / "demo.yaml").read_text()
    text = re.sub(r"backend: onnxruntime.*", "backend: tensorrt", text).replace("../engines", str(ROOT / "engines"))
    config = tmp_path / "tensorrt.yaml"
    config.write_text(text)
    return config


@pytest.mark.parametrize("install", ["base", "gpu"])
def test_a_tensorrt_config_without_tensorrt_is_one_clear_line(install, wheel, tmp_path):
    venv = venv_for(install, wheel)
    config = _tensorrt_config(tmp_path)
    check = _run([venv / "bin" / "inspector", "check-config", config], timeout=120)
    assert check.returncode == 2
    assert "TensorRT is not installed" in _one_clear_line(check)
    run = _run([venv / "bin" / "inspector", "run", "--config", config, "--no-console"], timeout=120)
    assert run.returncode == 3
    assert "TensorRT is not installed" in _one_clear_line(run)
    assert "cuda" not in run.stderr.lower().replace("backend cuda", "")  # no CUDA driver message


def test_the_base_install_runs_the_demo_and_refuses_what_it_lacks_in_one_line(wheel, tmp_path):
    venv = venv_for("base", wheel)
    ok = _run([venv / "bin" / "inspector", "check-config", ROOT / "configs" / "demo.yaml"], timeout=120)
    assert ok.returncode == 0, ok.stderr
    camera = _run([venv / "bin" / "inspector", "camera", "list"], timeout=60)
    assert camera.returncode == 2 and "camera extra" in _one_clear_line(camera)
    genicam = tmp_path / "genicam.yaml"
    text = (ROOT / "configs" / "genicam-viky.yaml").read_text().replace("../engines", str(ROOT / "engines"))
    genicam.write_text(text)
    check = _run([venv / "bin" / "inspector", "check-config", genicam], timeout=120)
    assert check.returncode == 2 and "camera extra" in _one_clear_line(check)
    build = _run([venv / "bin" / "inspector-build-engine", ROOT / "engines" / "demo" / "recognizer.onnx"], timeout=60)
    assert build.returncode == 1 and "build extra" in _one_clear_line(build)


def test_the_camera_install_lists_the_simulated_camera(wheel):
    venv = venv_for("camera", wheel)
    result = _run([venv / "bin" / "inspector", "camera", "list"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "viky" in result.stdout.lower() or "TLSimu" in result.stdout


def test_the_build_install_checks_models_and_says_what_building_needs(wheel):
    venv = venv_for("build", wheel)
    model = ROOT / "engines" / "demo" / "recognizer.onnx"
    check = _run([venv / "bin" / "python", "-m", "inspector.build.onnx_check", model], timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    build = _run([venv / "bin" / "inspector-build-engine", model], timeout=120)
    assert build.returncode == 1 and "needs TensorRT's builder" in _one_clear_line(build)
