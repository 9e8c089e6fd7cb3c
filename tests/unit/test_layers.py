"""The layer rules of docs/architecture.md, held by reading every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


@pytest.mark.parametrize(
    "package",
    ["overlay_node.wire", "overlay_node.protocol", "overlay_node.crypto", "overlay_node.chain", "overlay_node.topics"],
)
def test_pure_layers_touch_no_io(package: str) -> None:
    for path in _modules(package):
        bad = {
            name
            for name in _imports(path)
            if name.split(".")[0] in {"trio", "trio_websocket", "sqlite3", "socket", "httpx", "starlette"}
            or name.startswith(
                (
                    "overlay_node.net",
                    "overlay_node.services",
                    "overlay_node.store",
                    "overlay_node.api",
                    "overlay_node.devnet",
                )
            )
        }
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_sql_only_in_store() -> None:
    for path in _modules("overlay_node"):
        if "store" in path.relative_to(ROOT).parts:
            continue
        assert "sqlite3" not in _imports(path), f"{path.relative_to(ROOT)} imports sqlite3 outside store/"


#: the layers from the bottom up: each may import the ones below it, none above
LAYERS = ["crypto", "wire", "chain", "topics", "protocol", "net", "services"]
#: the modules at the top of the package that belong to no layer; every layer may use them, they use only each other
BASE = {"errors", "config", "clock", "datadir", "logs", "signals", "metrics", "tls", "lru"}
#: the packages beside the layers, each with its own rules below
SIDE = {"store", "api", "devnet"}


def _part(name: str) -> str:
    """The part of ``overlay_node`` an import names: ``"api"`` for ``overlay_node.api.common``, ``"node"`` for
    ``overlay_node.node``, ``""`` for the package itself (``__version__``); other imports are not ours."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _ours(path: Path) -> set[str]:
    """The parts of ``overlay_node`` a module imports."""
    return {_part(name) for name in _imports(path) if name == "overlay_node" or name.startswith("overlay_node.")}


def _refused(package: str, forbidden: set[str]) -> None:
    for path in _modules(f"overlay_node.{package}"):
        bad = _ours(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports overlay_node.{{{', '.join(sorted(bad))}}}"


def test_every_package_and_module_has_its_rules() -> None:
    # a new package or top-level module must be given a place in the rules here (and in docs/architecture.md)
    package = ROOT / "overlay_node"
    packages = {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS) | SIDE
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    assert modules == BASE | {"node"}


def test_lower_layers_do_not_import_upper_ones() -> None:
    # nor the store: only services (and the node, the devnet) use it
    for i, layer in enumerate(LAYERS):
        upper = {*LAYERS[i + 1 :], "node", "api", "devnet"}
        _refused(layer, upper if layer == "services" else upper | {"store"})


def test_base_modules_import_only_each_other() -> None:
    for name in sorted(BASE):
        path = ROOT / "overlay_node" / f"{name}.py"
        bad = _ours(path) - BASE
        assert not bad, f"overlay_node/{name}.py imports {sorted(bad)}"


def test_store_imports_no_upper_layer() -> None:
    # the store may read the lower layers' types (chain/, wire/), never call up into the code that uses it
    _refused("store", {"net", "services", "api", "devnet", "node"})


def test_api_imports_neither_the_node_nor_the_devnet() -> None:
    # the apps get the node (its services) as an object; they never import it
    _refused("api", {"node", "devnet"})


def test_devnet_imports_no_api() -> None:
    # the devnet serves its ARC app with net/listen.py, as the node serves its apps
    _refused("devnet", {"api"})


def test_devnet_imports_only_lower_layers() -> None:
    # a test ledger beside the node: transactions (chain/ and below), its store, sockets, the base modules; none of
    # the node's services or apps
    allowed = {"devnet", "", "crypto", "wire", "chain", "store", "net"} | (BASE - {"metrics", "tls"})
    for path in _modules("overlay_node.devnet"):
        bad = _ours(path) - allowed
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_cli_control_commands_import_no_daemon_internals() -> None:
    # only the commands that start a daemon or a devnet (main, daemon, devnet_cmd) import daemon code
    allowed = ("overlay_node.errors",)
    starters = {"main.py", "daemon.py", "devnet_cmd.py", "__init__.py"}
    for path in sorted((ROOT / "overlay_cli").glob("*.py")):
        name = path.name
        if name in starters:
            continue
        bad = {n for n in _imports(path) if n.startswith("overlay_node") and not n.startswith(allowed)}
        assert not bad, f"overlay_cli/{name} imports {sorted(bad)}"


def test_production_code_does_not_import_the_devnet() -> None:
    # the devnet is a test ledger: only the node (which embeds one when no ARC is configured) and the CLI's
    # `devnet` command start it; nothing else may depend on it
    allowed = {ROOT / "overlay_node" / "node.py"}
    for path in _modules("overlay_node"):
        if path in allowed or "devnet" in path.relative_to(ROOT).parts:
            continue
        bad = {name for name in _imports(path) if name.startswith("overlay_node.devnet")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
