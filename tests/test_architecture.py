"""The layout's rules, checked over the import graph of the `inspector` package (every import statement,
including those inside functions: a lazy import is still a dependency).

- no import cycles;
- the daemon (everything outside inspector/train and inspector/build) imports nothing from training or building;
- each module imports only third-party packages of the install that carries it (the base package, or its extra):
  the static half of tests/test_extras.py, which installs each extra alone and imports its modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "inspector"

BASE = {"numpy", "cv2", "onnxruntime", "zmq", "prometheus_client", "pydantic", "yaml", "orjson"}
# Which third-party packages a module may import besides BASE: module-name prefix -> packages of its extra.
EXTRA_IMPORTS = {
    "inspector.sources.genicam": {"genicam", "harvesters"},  # camera
    "inspector.camera_cli": {"genicam", "harvesters"},  # camera (imported lazily by the commands)
    "inspector.backends.tensorrt": {"tensorrt", "tensorrt_lean"},  # gpu
    "inspector.backends.cuda": set(),  # gpu: through gpu_memory; onnxruntime-gpu is still `onnxruntime`
    "inspector.backends.gpu_memory": {"cuda"},  # gpu
    "inspector.backends.gpu_preprocess": {"cuda"},  # gpu
    "inspector.build": {"onnx", "tensorrt"},  # build (+ gpu for the builder itself)
    "inspector.archive.tune": {"matplotlib"},  # archive (the sweep plot, imported when asked for)
    "inspector.gateway": {"asyncua", "pymodbus", "cryptography"},  # plc
    "inspector.train": {"torch", "torchvision", "onnx", "tqdm", "matplotlib"},  # train
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # `from pkg import mod` imports the submodule pkg.mod when there is one.
            for alias in node.names:
                found.add(f"{module}.{alias.name}")
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _is_runtime(name: str) -> bool:
    return not name.startswith(("inspector.train", "inspector.build"))


def test_the_daemon_imports_nothing_from_training_or_building():
    offenders = [
        f"{name} imports {dep}"
        for name, deps in graph().items()
        if _is_runtime(name)
        for dep in deps
        if not _is_runtime(dep)
    ]
    assert not offenders, "\n".join(sorted(offenders))


def test_each_module_imports_only_what_its_install_provides():
    offenders = []
    stdlib = set(sys.stdlib_module_names)
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        allowed = set(BASE)
        for prefix, extra in EXTRA_IMPORTS.items():
            if name == prefix or name.startswith(prefix + "."):
                allowed |= extra
        for dep in imports_of(path):
            top = dep.split(".")[0]
            if top in ("inspector", "__future__", "") or top in stdlib or top in allowed:
                continue
            offenders.append(f"{name} imports {dep}, which its install does not provide")
    assert not offenders, "\n".join(sorted(set(offenders)))
