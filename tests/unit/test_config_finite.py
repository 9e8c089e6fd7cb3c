"""Every float key of the config refuses NaN and the infinities, from the file, the environment and flags, with its
dotted key in the message (a NaN passes any range check, since every comparison with it is false)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from overlay_node.config import Config, load_config
from overlay_node.errors import ConfigError


def _float_keys() -> list[str]:
    keys = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(cls)
        keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(cls) if hints[f.name] is float]
    return keys


FLOAT_KEYS = _float_keys()


def test_there_are_float_keys_to_check() -> None:
    assert "node.shutdown_grace" in FLOAT_KEYS
    assert len(FLOAT_KEYS) > 40


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("literal", ["nan", "inf", "-inf", "+nan"])
def test_toml_non_finite_is_refused_with_the_key(tmp_path: Path, key: str, literal: str) -> None:
    section, name = key.split(".")
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{name} = {literal}\n")
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": expected a finite number"):
        load_config(path, env={})


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity"])
def test_env_and_flags_non_finite_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^node\.shutdown_grace: expected a finite number"):
        load_config(env={"OVERLAY_NODE_NODE_SHUTDOWN_GRACE": text})
    with pytest.raises(ConfigError, match=r"^wallet\.settle_retry_max: expected a finite number"):
        load_config(env={}, overrides={"wallet.settle_retry_max": text})
    with pytest.raises(ConfigError, match=r"^dht\.renew_fraction: expected a finite number"):
        load_config(env={}, overrides={"dht.renew_fraction": float(text)})


def test_finite_values_still_load() -> None:
    cfg = load_config(env={"OVERLAY_NODE_NODE_SHUTDOWN_GRACE": "2.5"}, overrides={"wallet.settle_retry_max": 60})
    assert cfg.node.shutdown_grace == 2.5
    assert cfg.wallet.settle_retry_max == 60.0
