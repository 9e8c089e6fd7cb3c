"""Typed configuration: one frozen dataclass per section, one loader.

Precedence is defaults < config file < ``OVERLAY_NODE_<SECTION>_<KEY>`` environment variables < flags
(``overrides`` as ``{"section.key": value}``). Unknown sections or keys and out-of-range values raise
:class:`~overlay_node.errors.ConfigError` naming the dotted key path. ``configs/default.toml`` documents every key and
a unit test holds it equal to these defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from overlay_node.errors import ConfigError

ENV_PREFIX = "OVERLAY_NODE_"
KiB = 1024
MiB = 1024 * KiB


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"range": (lo, hi)}


@dataclass(frozen=True, slots=True)
class NodeSection:
    """Process-wide settings."""

    name: str = ""
    log_level: str = field(default="info", metadata={"choices": ("debug", "info", "warning", "error")})
    shutdown_grace: float = field(default=5.0, metadata=_range(0.1, 300))


@dataclass(frozen=True, slots=True)
class SwarmSection:
    """Peer links: the authenticated websocket listener and the peer manager."""

    host: str = "0.0.0.0"
    port: int = field(default=4760, metadata=_range(0, 65535))
    advertise_host: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    bootstrap: tuple[str, ...] = ()
    max_frame: int = field(default=1 * MiB, metadata=_range(4 * KiB, 64 * MiB))
    max_links: int = field(default=256, metadata=_range(1, 100_000))
    max_handshakes: int = field(default=128, metadata=_range(1, 100_000))
    max_handshakes_per_ip: int = field(default=32, metadata=_range(1, 100_000))
    max_inflight: int = field(default=64, metadata=_range(1, 10_000))
    handshake_timeout: float = field(default=10.0, metadata=_range(0.1, 600))
    request_timeout: float = field(default=30.0, metadata=_range(0.1, 3600))
    idle_timeout: float = field(default=120.0, metadata=_range(1, 86_400))
    keepalive_interval: float = field(default=5.0, metadata=_range(0.1, 86_400))
    keepalive_timeout: float = field(default=10.0, metadata=_range(0.1, 86_400))
    reconnect_min: float = field(default=0.5, metadata=_range(0.01, 3600))
    reconnect_max: float = field(default=30.0, metadata=_range(0.01, 86_400))
    transfer_window: int = field(default=8, metadata=_range(1, 1024))
    chunk_size: int = field(default=256 * KiB, metadata=_range(1 * KiB, 16 * MiB))


@dataclass(frozen=True, slots=True)
class HttpSection:
    """Public HTTP: health, metrics, the UHRP gateway and the overlay host; TLS when a certificate is given."""

    host: str = "127.0.0.1"
    port: int = field(default=4761, metadata=_range(0, 65535))
    max_body: int = field(default=64 * MiB, metadata=_range(1 * KiB, 1024 * MiB))
    max_head: int = field(default=256 * KiB, metadata=_range(4 * KiB, 16 * MiB))
    max_connections: int = field(default=1000, metadata=_range(1, 1_000_000))
    max_connections_per_ip: int = field(default=256, metadata=_range(1, 1_000_000))
    max_body_memory: int = field(default=128 * MiB, metadata=_range(1 * MiB, 64 * 1024 * MiB))
    head_timeout: float = field(default=10.0, metadata=_range(0.1, 3600))
    keep_alive_timeout: float = field(default=30.0, metadata=_range(0.1, 86_400))
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    public_url: str = ""


@dataclass(frozen=True, slots=True)
class ControlSection:
    """Local control API on a unix socket."""

    socket: str = ""


@dataclass(frozen=True, slots=True)
class StoreSection:
    """SQLite database settings."""

    busy_timeout: float = field(default=10.0, metadata=_range(0.1, 600))
    read_connections: int = field(default=4, metadata=_range(1, 64))
    cache_mib: int = field(default=16, metadata=_range(1, 4096))


@dataclass(frozen=True, slots=True)
class DhtSection:
    """The Kademlia DHT over UDP: endpoint, protocol constants, timeouts, schedules and abuse limits."""

    host: str = "0.0.0.0"
    port: int = field(default=4760, metadata=_range(0, 65535))
    bootstrap: tuple[str, ...] = ()
    k: int = field(default=20, metadata=_range(1, 20))
    alpha: int = field(default=3, metadata=_range(1, 20))
    request_timeout: float = field(default=1.0, metadata=_range(0.01, 60))
    request_retries: int = field(default=1, metadata=_range(0, 10))
    stall_timeout: float = field(default=0.2, metadata=_range(0.001, 60))
    max_skew: float = field(default=300.0, metadata=_range(1, 86_400))
    max_failures: int = field(default=3, metadata=_range(1, 100))
    replacement_size: int = field(default=20, metadata=_range(0, 1000))
    refresh_interval: float = field(default=3600.0, metadata=_range(1, 86_400))
    contact_check_interval: float = field(default=900.0, metadata=_range(0, 86_400))
    maintenance_interval: float = field(default=10.0, metadata=_range(0.01, 86_400))
    republish_interval: float = field(default=3600.0, metadata=_range(1, 86_400))
    renew_fraction: float = field(default=0.25, metadata=_range(0.01, 0.99))
    push_rank: int = field(default=3, metadata=_range(1, 20))
    max_pages: int = field(default=16, metadata=_range(1, 1024))
    value_contacts: int = field(default=8, metadata=_range(1, 20))
    max_value: int = field(default=1024, metadata=_range(0, 1024))
    max_ttl: float = field(default=86_400.0, metadata=_range(1, 86_400))
    max_records_per_key: int = field(default=128, metadata=_range(1, 1_000_000))
    max_records_per_publisher: int = field(default=256, metadata=_range(1, 1_000_000))
    max_store_bytes: int = field(default=64 * MiB, metadata=_range(1 * KiB, 64 * 1024 * MiB))
    max_datagrams_per_source: int = field(default=250, metadata=_range(1, 10_000_000))
    max_datagrams_per_ip: int = field(default=500, metadata=_range(1, 10_000_000))
    max_verifies_per_second: int = field(default=1000, metadata=_range(1, 10_000_000))
    mac_datagrams: bool = True
    socket_buffer: int = field(default=1 * MiB, metadata=_range(0, 256 * MiB))
    flush_timeout: float = field(default=5.0, metadata=_range(0.1, 600))


@dataclass(frozen=True, slots=True)
class AdvertsSection:
    """SHIP/SLAP adverts over the DHT and the janitor that health-checks advertised hosts."""

    ttl: float = field(default=3600.0, metadata=_range(1, 86_400))
    uri: str = ""
    janitor_interval: float = field(default=60.0, metadata=_range(0, 86_400))
    janitor_failures: int = field(default=3, metadata=_range(1, 100))
    check_timeout: float = field(default=2.0, metadata=_range(0.01, 60))


@dataclass(frozen=True, slots=True)
class WalletSection:
    """The wallet, BRC-29 payments and the settlement queue (ARC)."""

    arc_url: str = ""
    arc_api_key: str = ""
    headers_url: str = ""
    headers_api_key: str = ""
    arc_timeout: float = field(default=30.0, metadata=_range(0.1, 600))
    fee_rate: int = field(default=1, metadata=_range(0, 1_000_000))
    quote_ttl: float = field(default=300.0, metadata=_range(1, 86_400))
    max_quotes: int = field(default=100_000, metadata=_range(1, 10_000_000))
    max_payment_bytes: int = field(default=1 * MiB, metadata=_range(1 * KiB, 64 * MiB))
    max_beef_txs: int = field(default=1000, metadata=_range(1, 1_000_000))
    record_batch: int = field(default=256, metadata=_range(1, 100_000))
    settle_batch: int = field(default=500, metadata=_range(1, 10_000))
    settle_linger: float = field(default=0.25, metadata=_range(0, 60))
    settle_retry_min: float = field(default=1.0, metadata=_range(0.01, 3600))
    settle_retry_max: float = field(default=300.0, metadata=_range(0.01, 86_400))
    settle_poll_interval: float = field(default=5.0, metadata=_range(0.01, 86_400))
    unanswered_timeout: float = field(default=600.0, metadata=_range(1, 86_400 * 30))
    change_wait: float = field(default=5.0, metadata=_range(0, 600))
    devnet_block_interval: float = field(default=5.0, metadata=_range(0, 86_400))
    settle_delay: float = field(default=0.0, metadata=_range(0, 86_400))


@dataclass(frozen=True, slots=True)
class ContentSection:
    """UHRP content: the blob store budget, replication, retrieval and repair (issue 5)."""

    replication: int = field(default=3, metadata=_range(0, 64))
    chunk_size: int = field(default=1 * MiB, metadata=_range(64 * KiB, 64 * MiB))
    read_piece: int = field(default=512 * KiB, metadata=_range(4 * KiB, 16 * MiB))
    max_object: int = field(default=16 * 1024 * MiB, metadata=_range(1, 1 << 50))
    storage_budget: int = field(default=32 * 1024 * MiB, metadata=_range(0, 1 << 50))
    holders: int = field(default=4, metadata=_range(1, 64))
    per_holder: int = field(default=4, metadata=_range(1, 64))
    request_timeout: float = field(default=30.0, metadata=_range(0.1, 3600))
    check_timeout: float = field(default=3.0, metadata=_range(0.01, 600))
    hedge_delay: float = field(default=0.1, metadata=_range(0.001, 600))
    provider_ttl: float = field(default=3600.0, metadata=_range(1, 86_400))
    repair_interval: float = field(default=60.0, metadata=_range(0, 86_400))
    repair_jitter: float = field(default=0.2, metadata=_range(0, 1))
    trim_grace: float = field(default=600.0, metadata=_range(0, 86_400 * 30))
    trim_margin: int = field(default=0, metadata=_range(0, 64))
    grant_ttl: float = field(default=86_400.0, metadata=_range(1, 86_400 * 365))
    token_ttl: float = field(default=30 * 86_400.0, metadata=_range(60, 86_400 * 3650))


@dataclass(frozen=True, slots=True)
class StreamsSection:
    """Paid live streams (issue 6): buffers, batching, the unpaid grace period and the consumer's reconnects."""

    grace_period: float = field(default=10.0, metadata=_range(0.01, 3600))
    buffer_packets: int = field(default=10_000, metadata=_range(1, 10_000_000))
    max_packet: int = field(default=64 * KiB, metadata=_range(1, 16 * MiB))
    batch_packets: int = field(default=256, metadata=_range(1, 100_000))
    batch_bytes: int = field(default=256 * KiB, metadata=_range(1 * KiB, 64 * MiB))
    max_consumers: int = field(default=100, metadata=_range(1, 1_000_000))
    advert_ttl: float = field(default=3600.0, metadata=_range(1, 86_400))
    flush_interval: float = field(default=1.0, metadata=_range(0.01, 3600))
    consumer_queue: int = field(default=4096, metadata=_range(1, 10_000_000))
    reconnect_min: float = field(default=0.1, metadata=_range(0.01, 3600))
    reconnect_max: float = field(default=5.0, metadata=_range(0.01, 3600))
    resume_timeout: float = field(default=60.0, metadata=_range(0.1, 86_400))
    pay_ahead: int = field(default=256, metadata=_range(1, 1_000_000))
    max_pay_ahead: int = field(default=1024, metadata=_range(1, 1_000_000))
    pay_live_ahead: bool = False


@dataclass(frozen=True, slots=True)
class OverlaySection:
    """The overlay host on the http port: BRC-22 submit, BRC-24 lookup, the hosted plug-ins, SPV and broadcast."""

    topic_managers: tuple[str, ...] = ("tm_ship", "tm_slap", "tm_uhrp")
    lookup_services: tuple[str, ...] = ("ls_ship", "ls_slap", "ls_uhrp")
    spv: str = field(default="headers", metadata={"choices": ("headers", "scripts-only")})
    fee_rate: int = field(default=0, metadata=_range(0, 1_000_000))
    broadcast: bool = True
    propagate: bool = True
    durable: bool = True
    allow_http: bool = False
    max_submit_bytes: int = field(default=32 * MiB, metadata=_range(1 * KiB, 1024 * MiB))
    max_lookup_bytes: int = field(default=64 * KiB, metadata=_range(1 * KiB, 64 * MiB))
    max_beef_txs: int = field(default=10_000, metadata=_range(1, 1_000_000))
    max_lookup_outputs: int = field(default=10_000, metadata=_range(1, 10_000_000))
    max_history_depth: int = field(default=64, metadata=_range(0, 100_000))
    max_concurrent_submits: int = field(default=256, metadata=_range(1, 100_000))
    commit_batch: int = field(default=256, metadata=_range(1, 100_000))
    propagation_timeout: float = field(default=10.0, metadata=_range(0.1, 3600))
    sync_interval: float = field(default=300.0, metadata=_range(0, 86_400))
    sync_page: int = field(default=1000, metadata=_range(1, 100_000))
    sync_timeout: float = field(default=10.0, metadata=_range(0.1, 3600))
    sync_deadline: float = field(default=600.0, metadata=_range(1, 86_400))
    sync_max_nodes: int = field(default=256, metadata=_range(1, 100_000))
    sync_concurrency: int = field(default=8, metadata=_range(1, 1000))


@dataclass(frozen=True, slots=True)
class AuthSection:
    """BRC-104 mutual authentication and BRC-105 payments on the public http port (issue 15)."""

    enabled: bool = True
    require: tuple[str, ...] = ("/requestSyncResponse", "/requestForeignGASPNode")
    priced: bool = True
    lookup_price: int = field(default=0, metadata=_range(0, 21_000_000 * 100_000_000))
    max_sessions: int = field(default=10_000, metadata=_range(1, 10_000_000))
    session_ttl: float = field(default=3600.0, metadata=_range(1, 86_400 * 30))
    max_seen_requests: int = field(default=200_000, metadata=_range(1, 100_000_000))
    max_body: int = field(default=32 * MiB, metadata=_range(1 * KiB, 1024 * MiB))
    max_response: int = field(default=64 * MiB, metadata=_range(1 * KiB, 4096 * MiB))
    client_timeout: float = field(default=30.0, metadata=_range(0.1, 3600))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole node configuration."""

    node: NodeSection = field(default_factory=NodeSection)
    swarm: SwarmSection = field(default_factory=SwarmSection)
    http: HttpSection = field(default_factory=HttpSection)
    control: ControlSection = field(default_factory=ControlSection)
    store: StoreSection = field(default_factory=StoreSection)
    dht: DhtSection = field(default_factory=DhtSection)
    adverts: AdvertsSection = field(default_factory=AdvertsSection)
    wallet: WalletSection = field(default_factory=WalletSection)
    content: ContentSection = field(default_factory=ContentSection)
    streams: StreamsSection = field(default_factory=StreamsSection)
    overlay: OverlaySection = field(default_factory=OverlaySection)
    auth: AuthSection = field(default_factory=AuthSection)


def _section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(path: str, raw: object, annotation: object, *, from_text: bool) -> object:
    """Convert ``raw`` to ``annotation`` or raise ConfigError naming ``path``."""
    convert = _to_strings if typing.get_origin(annotation) is tuple else _CONVERTERS.get(annotation)
    if convert is None:
        raise ConfigError(f"{path}: unsupported type {annotation!r}")  # pragma: no cover - a bug in this module
    return convert(path, raw, from_text)


def _to_strings(path: str, raw: object, from_text: bool) -> tuple[str, ...]:
    if from_text and isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list | tuple) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(f"{path}: expected a list of strings, got {raw!r}")
    return tuple(raw)


def _to_bool(path: str, raw: object, from_text: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if from_text and isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return raw.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{path}: expected true or false, got {raw!r}")


def _to_int(path: str, raw: object, from_text: bool) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if from_text and isinstance(raw, str):
        try:
            return int(raw, 0)
        except ValueError:
            pass
    raise ConfigError(f"{path}: expected an integer, got {raw!r}")


def _to_float(path: str, raw: object, from_text: bool) -> float:
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif from_text and isinstance(raw, str):
        with contextlib.suppress(ValueError):
            value = float(raw)
    if value is None:
        raise ConfigError(f"{path}: expected a number, got {raw!r}")
    # NaN passes every range check (each comparison with it is false), and every float key is a finite quantity
    if not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {raw!r}")
    return value


def _to_str(path: str, raw: object, _from_text: bool) -> str:
    if isinstance(raw, str):
        return raw
    raise ConfigError(f"{path}: expected a string, got {raw!r}")


#: the converter for each scalar annotation of the config's fields
_CONVERTERS: Final[Mapping[object, Callable[[str, object, bool], object]]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
}


def _check(path: str, value: object, f: dataclasses.Field[Any]) -> None:
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: must be one of {', '.join(choices)}, got {value!r}")
    rng = f.metadata.get("range")
    if rng is not None and isinstance(value, int | float):
        lo, hi = rng
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{path}: {value!r} is out of range [{lo}, {hi}]")


def _build_section(name: str, cls: type[Any], values: Mapping[str, tuple[object, bool]]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    kwargs: dict[str, object] = {}
    for key, f in known.items():
        path = f"{name}.{key}"
        if key in values:
            raw, from_text = values[key]
            value = _coerce(path, raw, hints[key], from_text=from_text)
        else:
            value = getattr(cls(), key)
        _check(path, value, f)
        kwargs[key] = value
    return cls(**kwargs)


def _env_layer(env: Mapping[str, str], sections: Mapping[str, type[Any]]) -> dict[str, dict[str, object]]:
    layer: dict[str, dict[str, object]] = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "DATA_DIR":
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                layer.setdefault(section, {})[rest[len(section) + 1 :]] = value
                break
        else:
            raise ConfigError(f"{var}: unknown config section (known: {', '.join(sections)})")
    return layer


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Load the configuration from defaults, an optional TOML file, the environment and flag overrides.

    Args:
        path: a TOML file; a missing file is an error only when given explicitly.
        env: environment variables (defaults to ``os.environ``).
        overrides: ``{"section.key": value}`` from command-line flags; strings are parsed like env values.

    Raises:
        ConfigError: unreadable TOML, unknown section or key, wrong type, value out of range.
    """
    sections = _section_types()
    merged: dict[str, dict[str, tuple[object, bool]]] = {name: {} for name in sections}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: config file not found") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        for name, table in data.items():
            if name not in sections:
                raise ConfigError(f"{name}: unknown config section (known: {', '.join(sections)})")
            if not isinstance(table, dict):
                raise ConfigError(f"{name}: expected a table")
            for key, value in table.items():
                merged[name][key] = (value, False)
    for name, table in _env_layer(os.environ if env is None else env, sections).items():
        for key, value in table.items():
            merged[name][key] = (value, True)
    for dotted, value in (overrides or {}).items():
        name, _, key = dotted.partition(".")
        if name not in sections or not key:
            raise ConfigError(f"{dotted}: unknown config key")
        merged[name][key] = (value, isinstance(value, str))
    return Config(**{name: _build_section(name, cls, merged[name]) for name, cls in sections.items()})


def config_to_dict(config: Config) -> dict[str, dict[str, object]]:
    """The configuration as plain TOML-compatible data (tuples become lists)."""
    out: dict[str, dict[str, object]] = {}
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(section).items()}
    return out


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def starter_config_text() -> str:
    """The ``config.toml`` that ``overlay-node init`` writes: every key, commented out at its default."""
    lines = [
        "# overlay-node configuration. Every key is optional; uncomment to change one.",
        "# The documented list of keys is configs/default.toml in the source tree.",
    ]
    for section, values in config_to_dict(Config()).items():
        lines += ["", f"[{section}]"]
        lines += [f"# {key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
