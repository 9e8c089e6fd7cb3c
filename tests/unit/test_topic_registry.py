"""Finding plug-ins by name: built-ins, ``name=module:attr``, installed entry points, and clear config errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overlay_node.errors import ConfigError
from overlay_node.topics.plugins import LookupService, PluginContext, TopicManager
from overlay_node.topics.registry import LOOKUP_GROUP, TOPIC_GROUP, load_plugins
from tests.plugins import demo

KEY = "02" + "11" * 32


def load(
    topics: list[str], services: list[str] | None = None
) -> tuple[dict[str, TopicManager], dict[str, LookupService]]:
    return load_plugins(topics, services or [], identity_key=KEY, allow_http=False)


def test_builtins_and_a_module_path() -> None:
    managers, services = load(["tm_ship", "tm_slap", "tm_uhrp", demo.TOPIC], ["ls_ship", "ls_uhrp", demo.SERVICE])
    assert list(managers) == ["tm_ship", "tm_slap", "tm_uhrp", "tm_demo"]
    assert list(services) == ["ls_ship", "ls_uhrp", "ls_demo"]
    assert managers["tm_demo"].metadata().name == "Demo topic"


def test_an_installed_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what pip writes for a package that declares the entry points in its pyproject.toml
    info = tmp_path / "overlay_demo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: overlay-demo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{TOPIC_GROUP}]\ntm_demo = tests.plugins.demo:DemoTopicManager\n\n"
        f"[{LOOKUP_GROUP}]\nls_demo = tests.plugins.demo:DemoLookupService\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    managers, services = load(["tm_demo"], ["ls_demo"])
    assert type(managers["tm_demo"]).__name__ == "DemoTopicManager"
    assert type(services["ls_demo"]).__name__ == "DemoLookupService"


class NotAManager:
    def __init__(self, context: PluginContext) -> None:
        pass


def broken(_context: PluginContext) -> TopicManager:
    raise RuntimeError("no database")


@pytest.mark.parametrize(
    ("topics", "services", "message"),
    [
        (["tm_Demo1"], [], "is not a tm_* name"),
        (["ls_ship"], [], "is not a tm_* name"),
        ([], ["tm_ship"], "is not a ls_* name"),
        (["tm_nothing"], [], "no built-in, and no installed entry point"),
        (["tm_ship", "tm_ship"], [], "listed twice"),
        (["tm_x=no.such.module:Thing"], [], "cannot import"),
        (["tm_x=tests.plugins.demo:Missing"], [], "cannot import"),
        (["tm_x=not a target"], [], "expected name=module:attribute"),
        ([f"tm_x={__name__}:NotAManager"], [], "is not a TopicManager"),
        ([f"tm_x={__name__}:broken"], [], "could not be created: no database"),
        ([], [f"ls_x={__name__}:NotAManager"], "is not a LookupService"),
    ],
)
def test_config_errors_name_the_key(topics: list[str], services: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load(topics, services)
    assert str(caught.value).startswith("overlay.topic_managers" if topics else "overlay.lookup_services")
