"""The import graph of `pipeline/` and `lix/`, read from the source with `ast` (nothing is imported).

Every import counts, the ones inside functions too: a lazy import is still a dependency, and a circle
hidden behind one is still a circle. Run as a script to print the measures the architecture test checks:

    python tests/import_graph.py
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "lix")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted (resolved to a module of the repository)
    names: tuple[str, ...]  # the names taken with `from target import ...` (empty for `import target`)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[module_name(path)] = path
    return out


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a module of the repository."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return None


def imports(mods: dict[str, Path] | None = None) -> list[Import]:
    mods = modules() if mods is None else mods
    found = []
    for src, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = src if _is_package(src, mods) else src.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    tgt = _resolve(alias.name, mods)
                    if tgt:
                        found.append(Import(src, tgt, (), node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                if _resolve(full, mods) is None:
                    continue
                for alias in node.names:
                    sub = f"{full}.{alias.name}"
                    if sub in mods:  # `from pkg import module`
                        found.append(Import(src, sub, (), node.lineno))
                    else:
                        found.append(Import(src, _resolve(full, mods), (alias.name,), node.lineno))
    return found


def graph(found: list[Import]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for imp in found:
        if imp.source != imp.target:
            g.setdefault(imp.source, set()).add(imp.target)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(g) | {w for ws in g.values() for w in ws}):
        if v not in index:
            visit(v)
    return sorted(out)


def private_imports(found: list[Import]) -> list[Import]:
    """`from a import _b` across modules (a package's own `__init__` re-exporting is no exception)."""
    return [i for i in found for n in i.names if n.startswith("_") and not n.startswith("__")]


def long_files(limit: int = 500, package: str = "lix") -> dict[str, int]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > limit:
            out[str(path.relative_to(ROOT))] = n
    return out


def layer_of(module: str, layers: list[tuple[str, ...]]) -> int:
    """The index of the first layer one of whose prefixes names the module (longest prefix wins)."""
    best, rank = -1, -1
    for i, prefixes in enumerate(layers):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def upward_imports(found: list[Import], layers: list[tuple[str, ...]]) -> list[Import]:
    """Imports from a module of a lower layer (smaller index) of a module of a higher one."""
    return [i for i in found if layer_of(i.source, layers) < layer_of(i.target, layers)]


def main() -> None:
    found = imports()
    g = graph(found)
    cyc = cycles(g)
    print(f"modules: {len(modules())}, import edges: {sum(len(v) for v in g.values())}")
    print(f"import circles: {len(cyc)}")
    for c in cyc:
        print("  " + " <-> ".join(c))
    priv = private_imports(found)
    print(f"private names imported from another module: {len(priv)}")
    for i in priv:
        print(f"  {i.source}:{i.line} takes {', '.join(i.names)} from {i.target}")
    longs = long_files()
    print(f"files in lix/ over 500 lines: {len(longs)}")
    for p, n in longs.items():
        print(f"  {p}: {n}")
    up = [i for i in found if i.source.startswith("pipeline") and i.target.startswith("lix")]
    print(f"imports from pipeline/ into lix/: {len(up)}")


if __name__ == "__main__":
    main()
