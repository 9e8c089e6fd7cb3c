"""Finding the topic managers and lookup services a node hosts, by name.

A name in ``overlay.topic_managers`` / ``overlay.lookup_services`` is resolved, in order, as:
1. ``name=module:attribute``: that factory, imported (a plug-in that is not installed as a package);
2. a built-in (``tm_ship``, ``tm_slap``, ``tm_uhrp``, ``ls_ship``, ``ls_slap``, ``ls_uhrp``);
3. a Python entry point of that name in the group ``overlay_node.topic_managers`` or
   ``overlay_node.lookup_services`` (how a third-party package ships ``tm_x``/``ls_x``: in its
   ``pyproject.toml``, ``[project.entry-points."overlay_node.topic_managers"] tm_x = "pkg.module:factory"``).

A factory is called with a :class:`~overlay_node.topics.plugins.PluginContext` and returns the plug-in (a class
whose constructor takes the context is a factory). Names follow BRC-87; a name that resolves to nothing, a factory
that fails, or an object that is not a topic manager (lookup service) is a :class:`~overlay_node.errors.ConfigError`
naming the config key, raised before the node serves anything.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from overlay_node.errors import ConfigError
from overlay_node.topics.plugins import LookupService, PluginContext, TopicManager

__all__ = ["LOOKUP_GROUP", "TOPIC_GROUP", "load_plugins"]

TOPIC_GROUP: Final = "overlay_node.topic_managers"
LOOKUP_GROUP: Final = "overlay_node.lookup_services"
#: BRC-87 names as the reference SHIP/SLAP managers enforce them
_NAME: Final = re.compile(r"^(?=.{1,50}$)(?:tm_|ls_)[a-z]+(?:_[a-z]+)*$")
_TARGET: Final = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

P = TypeVar("P")
Factory = Callable[[PluginContext], Any]


#: the module of each built-in (imported when a node hosts it)
_BUILTINS: Final = {
    "tm_ship": "ship",
    "tm_slap": "ship",
    "ls_ship": "ship",
    "ls_slap": "ship",
    "tm_uhrp": "uhrp",
    "ls_uhrp": "uhrp",
}


def _builtin(name: str) -> Factory | None:
    module = _BUILTINS.get(name)
    if module is None:
        return None
    factories: Mapping[str, Factory] = importlib.import_module(f"overlay_node.topics.{module}").FACTORIES
    return factories[name]


def _import(target: str, key: str) -> Factory:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot import {target!r}: {exc}") from exc
    if not callable(obj):
        raise ConfigError(f"{key}: {target!r} is not callable")
    factory: Factory = obj
    return factory


def _entry_point(group: str, name: str, key: str) -> Factory | None:
    found = [ep for ep in importlib.metadata.entry_points(group=group) if ep.name == name]
    if not found:
        return None
    try:
        obj = found[0].load()
    except Exception as exc:
        raise ConfigError(f"{key}: entry point {name} ({found[0].value}) failed to load: {exc}") from exc
    factory: Factory = obj
    return factory


def _load(
    entries: Sequence[str],
    *,
    kind: str,
    group: str,
    key: str,
    check: type[P],
    context: Callable[[str], PluginContext],
) -> dict[str, P]:
    out: dict[str, P] = {}
    for entry in entries:
        name, _, target = (part.strip() for part in entry.partition("="))
        if not _NAME.fullmatch(name) or not name.startswith(kind):
            raise ConfigError(
                f"{key}: {name!r} is not a {kind}* name (BRC-87: lower-case letters in words joined by single "
                "underscores, at most 50 characters)"
            )
        if name in out:
            raise ConfigError(f"{key}: {name} is listed twice")
        if target:
            if not _TARGET.fullmatch(target):
                raise ConfigError(f"{key}: {entry!r}: expected name=module:attribute")
            factory: Factory | None = _import(target, key)
        else:
            factory = _builtin(name) or _entry_point(group, name, key)
        if factory is None:
            raise ConfigError(f"{key}: no built-in, and no installed entry point in {group}, is named {name}")
        try:
            plugin = factory(context(name))
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"{key}: {name} could not be created: {exc}") from exc
        if not isinstance(plugin, check):
            raise ConfigError(f"{key}: {name} is not a {check.__name__} (it lacks the methods the engine calls)")
        out[name] = plugin
    return out


def load_plugins(
    topic_managers: Sequence[str],
    lookup_services: Sequence[str],
    *,
    identity_key: str,
    allow_http: bool,
) -> tuple[dict[str, TopicManager], dict[str, LookupService]]:
    """Create the plug-ins listed in the config (see the module docstring).

    Raises:
        ConfigError: a name that resolves to nothing, fails to load, or is not a plug-in of its kind.
    """

    def context(name: str) -> PluginContext:
        return PluginContext(name=name, identity_key=identity_key, allow_http=allow_http)

    managers = _load(
        topic_managers,
        kind="tm_",
        group=TOPIC_GROUP,
        key="overlay.topic_managers",
        check=TopicManager,  # type: ignore[type-abstract]
        context=context,
    )
    services = _load(
        lookup_services,
        kind="ls_",
        group=LOOKUP_GROUP,
        key="overlay.lookup_services",
        check=LookupService,  # type: ignore[type-abstract]
        context=context,
    )
    return managers, services
