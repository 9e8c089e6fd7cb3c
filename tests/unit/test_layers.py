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


def test_lower_layers_do_not_import_upper_ones() -> None:
    order = ["crypto", "wire", "chain", "topics", "protocol", "net", "services"]
    for i, layer in enumerate(order):
        upper = tuple(f"overlay_node.{name}" for name in [*order[i + 1 :], "node", "api", "devnet"])
        for path in _modules(f"overlay_node.{layer}"):
            bad = {name for name in _imports(path) if name.startswith(upper)}
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
