"""The house's shape: no import cycle in src/latentq (imports inside functions included), one-way layers.

The layers themselves are import-linter's contract in pyproject.toml (`lint-imports`, run by .ci/run);
this test needs nothing but the source: it reads every module's imports and looks for a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: annotations only, never imported when the code runs."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(child) for child in ast.walk(node))
    return inside


def import_graph() -> dict[str, set[str]]:
    """Module -> the latentq modules it imports, wherever the import stands (module level or in a function)."""
    modules: dict[str, tuple[Path, bool]] = {}
    for path in (SRC / "latentq").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text())
        type_only = _type_checking_nodes(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else base)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_latentq_imports_itself_back():
    graph = import_graph()
    assert "latentq.worker.rq_worker" in graph and "latentq.state.keys" in graph["latentq.worker.rq_worker"]
    assert cycles(graph) == []


def test_the_moved_modules_still_import_under_their_old_names():
    """One release of grace: each old name is the moved module itself (monkeypatching either one works)."""
    import importlib

    moved = {"latentq.spec": "latentq.core.request", "latentq.keys": "latentq.state.keys",
             "latentq.lifecycle": "latentq.state.lifecycle", "latentq.stack": "latentq.local.stack",
             "latentq.cli_worker": "latentq.cli.worker", "latentq.producer.status": "latentq.state.status",
             "latentq.remote": "latentq.integrations.remote_decode"}  # fmt: skip
    for old, new in moved.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from latentq.webhooks import WebhookSender
    from latentq.webhooks.sender import WebhookSender as moved_sender

    assert WebhookSender is moved_sender
