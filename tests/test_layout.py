"""The library's imports follow the pipeline's stages and never run in a circle, counting the
imports made inside functions too (a lazy import is still an import a reader has to follow)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each stage may import the stages below it and the modules at qwenvl's root, never above.
STAGES = {
    "root": 0,
    "prepare": 1,
    "data": 1,
    "inference": 2,
    "standins": 2,
    "train": 3,
    "evaluate": 3,
    "bench": 4,
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "qwenvl").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the qwenvl modules it imports anywhere in its text."""
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {other for other in found if other in modules and other != name}
    return graph


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (ROOT / "qwenvl" / parts[-1]).is_dir() else "root"


def test_every_package_of_the_library_has_a_stage():
    packages = {p.name for p in (ROOT / "qwenvl").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(STAGES) - {"root"}


def test_imports_run_down_the_stages():
    graph = _imports(_modules())
    upward = [
        f"{module} -> {other}"
        for module, others in graph.items()
        for other in others
        if STAGES[_stage(other)] > STAGES[_stage(module)]
        or (_stage(other) != _stage(module) and STAGES[_stage(other)] == STAGES[_stage(module)])
    ]
    assert not upward, "imports against the stage order: " + ", ".join(sorted(upward))


def test_no_import_circle():
    graph = _imports(_modules())
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError(
                "import circle: " + " -> ".join([*path[path.index(module) :], module])
            )
        if module in done:
            return
        path.append(module)
        for other in sorted(graph[module]):
            visit(other)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_interface_imports_no_backend():
    """qwenvl.inference.backend is what evaluation, prediction and task metrics import; the
    backends import it, and only the opener knows them all."""
    graph = _imports(_modules())
    assert not {m for m in graph["qwenvl.inference.backend"] if m.endswith("_backend")}
    assert {"qwenvl.inference.transformers_backend", "qwenvl.inference.vllm_backend"} <= graph[
        "qwenvl.inference.opener"
    ]
