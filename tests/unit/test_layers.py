"""The package tree follows the data flow: each layer imports only from the layers
below it, and no module imports, however late, one that imports it back.

Every import counts, including those inside functions (a lazy import is still a
dependency); only imports under ``if TYPE_CHECKING:`` are left out, since they
never run.  docs/ARCHITECTURE.md explains the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vzpkg"

# lowest first: a layer may import from itself and from those before it
LAYERS = ("core", "archive", "template", "store", "build", "mirror", "runtime", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(name: str, path: Path, known: set[str]) -> set[tuple[str, int]]:
    """(imported vzpkg module, line) for every import in *path* that runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add((sub if sub in known else base, node.lineno))
    return {(m, line) for m, line in out if m.startswith("vzpkg.") and m in known}


def _graph() -> dict[str, set[tuple[str, int]]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_belongs_to_a_layer() -> None:
    loose = [m for m in _modules() if m != "vzpkg" and _layer(m) is None]
    assert loose == [], f"put these in one of {LAYERS}: {loose}"


def test_each_layer_imports_only_from_the_layers_below_it() -> None:
    wrong = []
    for module, imports in _graph().items():
        mine = _layer(module)
        for target, line in sorted(imports):
            theirs = _layer(target)
            if mine and theirs and LAYERS.index(theirs) > LAYERS.index(mine):
                wrong.append(f"{module}:{line} imports {target} ({mine} is below {theirs})")
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {m: {t for t, _ in imps if t != m} for m, imps in _graph().items()}
    assert _cycles(graph) == []


def test_the_checks_see_lazy_imports_and_cycles() -> None:
    """The reader finds an import inside a function, and the cycle finder a loop."""
    graph = _graph()
    assert ("vzpkg.build.pipeline", 1) not in graph["vzpkg.cli.cmd_build"]
    assert any(t == "vzpkg.build.pipeline" for t, _ in graph["vzpkg.cli.cmd_build"])
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_readme_layout_lists_the_tree_in_layer_order() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    listed = [line.split()[0] for line in block.splitlines() if line.strip()]
    packages = [f"vzpkg/{p.name}/" for p in sorted(PACKAGE.iterdir())
                if (p / "__init__.py").is_file()]
    in_readme = [d for d in listed if d.startswith("vzpkg/")]
    assert sorted(in_readme) == sorted(packages)
    assert in_readme == [f"vzpkg/{layer}/" for layer in LAYERS]
    for entry in listed:
        assert (ROOT / entry).exists(), f"README's layout names {entry}, which is not here"
