"""The layers of shared/ARCHITECTURE.md, read from every import statement of the project (at module level and inside
functions): what each layer may import, and no cycles between modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("reference", "engines", "plugin", "bench", "reports")
# what a layer's code (its tests aside) may import of ours besides itself
ALLOWED = {
    "reference": (),
    "plugin": (),
    "engines": ("reference", "plugin"),
    "bench": ("reference", "engines", "plugin", "reports"),
    "reports": ("engines.spec", "engines.recipes"),
}


# the suites' own code: their conftests and benchmark files, and the option groups those share
SUITES = ("conftest.py", "bench_*.py", "bench/matrix.py")


def in_suites(path: Path) -> bool:
    return "tests" in path.parts or any(path.match(pattern) for pattern in SUITES)


def imports(everything: bool = False) -> dict[str, set[str]]:
    """module -> the project modules it imports (a package import counts as its __init__); `everything`: every
    module it imports, ours or not, in the library's code (the suites' aside)."""
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "tests" in path.parts or (everything and in_suites(path.relative_to(ROOT))):
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found, tree = set(), ast.parse(path.read_text())
            typing_only = {  # `if TYPE_CHECKING:` imports are for annotations, never run
                id(n) for block in ast.walk(tree)
                if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
                for n in ast.walk(block)
            }  # fmt: skip
            for node in ast.walk(tree):
                if id(node) in typing_only:
                    continue
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module)
                    found.update(f"{node.module}.{a.name}" for a in node.names)
            graph[name] = found if everything else {m for m in found if m.split(".")[0] in PACKAGES}
    if everything:
        return graph
    modules = set(graph)
    return {k: {m for m in v if m in modules and m != k} for k, v in graph.items()}


def test_each_layer_imports_only_what_it_may():
    wrong = []
    for module, deps in imports().items():
        layer = module.split(".")[0]
        for dep in deps:
            ok = dep.split(".")[0] == layer or any(dep == a or dep.startswith(a + ".") for a in ALLOWED[layer])
            if not ok:
                wrong.append(f"{module} -> {dep}")
    assert not wrong, wrong


def test_no_module_imports_itself_through_others():
    graph, cycles = imports(), []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            if dep == path[0]:
                cycles.append(" -> ".join([*path, dep]))
            elif dep not in path and len(path) < 8:
                visit(dep, [*path, dep])

    for module in sorted(graph):
        visit(module, [module])
    assert not cycles, cycles[:5]


def test_pytest_is_imported_only_by_the_suites():
    """The library (an image, the command line, the reports) runs without pytest or pytest-benchmark installed."""
    wrong = sorted(
        f"{module} -> {dep}"
        for module, deps in imports(everything=True).items()
        for dep in deps
        if dep.split(".")[0] in ("pytest", "pytest_benchmark", "_pytest")
    )
    assert not wrong, wrong
