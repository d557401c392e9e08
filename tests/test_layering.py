"""Imports flow downwards (docs/architecture.md): checked by walking every module's imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "meshnode"

# Lower layers never import higher ones; a layer may import itself.
LAYERS = {
    "errors": 0,
    "policy": 1,
    "certs": 1,
    "resilience": 2,
    "net": 3,
    "events": 3,
    "tracing": 3,
    "discovery": 3,  # the backends and ServiceDiscovery, on the resilience library
    "actors": 4,
    "proxy": 5,
    "admin": 5,
    "reload": 6,
    "fleet": 6,
    "demo": 6,
    "notify": 6,
    "engine": 6,
    "node": 7,
    "client": 7,
    "workers": 7,
    "worker_process": 7,
    "cli_admin": 8,
    "logs": 0,
    "cli": 8,
    "__main__": 9,
}
# Decisions stay pure: no event loop, no sockets, no clocks of their own.
PURE = {"policy", "resilience/core"}
IMPURE_MODULES = {"trio", "socket", "ssl", "asyncio", "time"}


def layer_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def imports(path: Path) -> set[str]:
    """What ``path`` imports, ``TYPE_CHECKING`` imports included; ``from a import b`` as both
    ``a`` and ``a.b``, since ``b`` may be a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_downwards(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if own == "__init__":
        return
    assert own in LAYERS, f"{own} has no layer: add it to LAYERS and docs/architecture.md"
    for module in imports(path):
        other = layer_of(module)
        if module.startswith("meshnode.") and other in LAYERS:  # not a name (__version__)
            assert LAYERS[other] <= LAYERS[own], f"{own} must not import {module}"
        if own in PURE or any(str(path.relative_to(PACKAGE)).startswith(p) for p in PURE):
            assert module.split(".")[0] not in IMPURE_MODULES, f"{own} must stay pure: {module}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Which of meshnode's modules each one imports: a circle that only type checking
    closes is still a circle in the design."""
    names = {module_name(path): path for path in MODULES}
    return {
        name: {other for other in imports(path) if other in names and other != name}
        for name, path in names.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert circles(import_graph()) == []


def test_the_circle_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


DESCRIPTION_WIDTH = 85


def module_line(path: Path) -> str:
    """A module's line in docs/architecture.md: its path, and its docstring's first line,
    cut at a word with "..." where the docstring goes on (or the line would be too long)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    lines = doc.splitlines() or [""]
    first = lines[0]
    goes_on = len(lines) > 1 and bool(lines[1].strip())
    if len(first) > DESCRIPTION_WIDTH:
        first, goes_on = first[:DESCRIPTION_WIDTH].rsplit(" ", 1)[0].rstrip(",;:"), True
    return f"{path.relative_to(PACKAGE)!s:<35}{first}{'...' if goes_on else ''}"


def module_listing() -> str:
    return "\n".join(module_line(path) for path in MODULES if path.name != "__main__.py")


def test_the_architecture_page_lists_every_module_as_its_docstring_says() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    listing = page[page.index("## Every module") :]
    start = listing.index("```\n") + 4
    block = listing[start : listing.index("\n```", start)]
    assert block == module_listing(), (
        "docs/architecture.md's module list is out of date: "
        "python -m tests.test_layering prints it as it should be"
    )


if __name__ == "__main__":
    print(module_listing())


def test_the_library_names_service_discovery_without_importing_it() -> None:
    """SPEC section 9 names ``meshnode.resilience.ServiceDiscovery``; discovery sits a layer
    above the library, so the name resolves on first use and never at import."""
    script = (
        "import sys, meshnode.resilience as r\n"
        "assert 'meshnode.discovery' not in sys.modules, 'imported at import'\n"
        "import meshnode.discovery as d\n"
        "assert r.ServiceDiscovery is d.ServiceDiscovery and r.ServiceChange is d.ServiceChange\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
