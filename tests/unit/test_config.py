"""Config loading: defaults, precedence, validation, and default.toml kept equal to the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlay_node.config import Config, config_to_dict, load_config
from overlay_node.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_default_toml_equals_code_defaults() -> None:
    loaded = load_config(ROOT / "configs" / "default.toml", env={})
    assert loaded == Config()
    # every key of every section is written out, not just loadable
    import tomllib

    text = tomllib.loads((ROOT / "configs" / "default.toml").read_text())
    assert text == config_to_dict(Config())


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[swarm]\nport = 1000\nmax_links = 5\n[http]\nport = 2000\n")
    cfg = load_config(path, env={"OVERLAY_NODE_SWARM_PORT": "1001", "OVERLAY_NODE_HTTP_PORT": "2001"})
    assert (cfg.swarm.port, cfg.swarm.max_links, cfg.http.port) == (1001, 5, 2001)
    cfg = load_config(path, env={"OVERLAY_NODE_SWARM_PORT": "1001"}, overrides={"swarm.port": 0})
    assert cfg.swarm.port == 0


def test_env_list_and_bool_parsing() -> None:
    cfg = load_config(env={"OVERLAY_NODE_SWARM_BOOTSTRAP": "a:1, b:2"})
    assert cfg.swarm.bootstrap == ("a:1", "b:2")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[swarm]\nprot = 1\n", "swarm.prot: unknown key"),
        ("[swam]\nport = 1\n", "swam: unknown config section"),
        ("[swarm]\nport = 70000\n", "swarm.port: 70000 is out of range"),
        ("[swarm]\nport = 'x'\n", "swarm.port: expected an integer"),
        ("[node]\nlog_level = 'loud'\n", "node.log_level: must be one of"),
        ("[swarm]\nbootstrap = 'a:1'\n", "swarm.bootstrap: expected a list"),
        ("[swarm\n", "not valid TOML"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        load_config(path, env={})


def test_bad_env_and_override_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"swarm\.max_frame: .* out of range"):
        load_config(env={"OVERLAY_NODE_SWARM_MAX_FRAME": "1"})
    with pytest.raises(ConfigError, match="OVERLAY_NODE_NOPE_X: unknown config section"):
        load_config(env={"OVERLAY_NODE_NOPE_X": "1"})
    with pytest.raises(ConfigError, match=r"http\.nope: unknown key"):
        load_config(env={}, overrides={"http.nope": "1"})
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found"):
        load_config(Path("/nonexistent/missing.toml"), env={})
