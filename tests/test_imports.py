"""The storage package's modules depend on each other in one direction only: no module imports the
package itself or a module that (through others) imports it back, not even for type hints."""

from __future__ import annotations

import ast
from pathlib import Path

STORAGE = Path(__file__).resolve().parent.parent / "worker" / "stylebatch" / "storage"


def imports(path: Path) -> set[str]:
    """The storage modules `path` imports, type-checking-only imports included ("__init__": the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "stylebatch" and any(
                a.name == "storage" for a in node.names):
            found.add("__init__")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stylebatch.storage."):
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "stylebatch.storage":
            found |= {a.name for a in node.names if (STORAGE / f"{a.name}.py").exists()} or {"__init__"}
    return found


def test_the_storage_modules_import_each_other_without_a_cycle() -> None:
    graph = {p.stem: imports(p) for p in STORAGE.glob("*.py")}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert [m for m in sorted(graph) if m in reachable(m)] == []
