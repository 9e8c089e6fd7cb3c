"""``ctl advertise | adverts | discover`` and ``ctl dht get | put | status``."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Annotated, Any

import typer

from overlay_cli.client import control_client
from overlay_cli.output import CliState, JsonOption, cli_errors, emit, emit_fields, print_rows, when
from overlay_node.errors import BadRequest

if TYPE_CHECKING:
    from rich.console import Console

dht_app = typer.Typer(help="Operator tools for the DHT (debug).", no_args_is_help=True)


def _name(topic: str | None, service: str | None) -> dict[str, str]:
    if (topic is None) == (service is None):
        raise BadRequest("give exactly one of --topic tm_... or --service ls_...")
    return {"topic": topic} if topic is not None else {"service": service}  # type: ignore[dict-item]


Topic = Annotated[str | None, typer.Option("--topic", help="A SHIP topic, tm_*.")]
Service = Annotated[str | None, typer.Option("--service", help="A SLAP lookup service, ls_*.")]


def advertise(
    ctx: typer.Context,
    topic: Topic = None,
    service: Service = None,
    revoke: Annotated[bool, typer.Option("--revoke", help="Revoke the advert everywhere.")] = False,
    service_type: Annotated[str, typer.Option("--service-type", help="Free-form kind, e.g. feed, storage.")] = "",
    price: Annotated[int, typer.Option("--price", min=0, help="Price in satoshis.")] = 0,
    pricing_model: Annotated[
        str, typer.Option("--pricing-model", help="free, per-packet, per-second, per-request, per-byte, flat.")
    ] = "free",
    capability: Annotated[list[str] | None, typer.Option("--capability", help="Capability (repeatable).")] = None,
    region: Annotated[str, typer.Option("--region", help="Region tag, e.g. eu.")] = "",
    ttl: Annotated[float | None, typer.Option("--ttl", help="Seconds until the advert expires (refreshed).")] = None,
    uri: Annotated[str, typer.Option("--uri", help="Advertised URI (default: this node's http address).")] = "",
    on_chain: Annotated[
        bool, typer.Option("--on-chain/--no-token", help="Also put the advert on chain as a BRC-88 token.")
    ] = True,
    _json: JsonOption = False,
) -> None:
    """Advertise a topic (SHIP) or lookup service (SLAP) over the DHT and on chain (a BRC-88 token submitted to the
    tm_ship/tm_slap hosts, paid by the wallet), or revoke both with --revoke."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        body: dict[str, Any] = _name(topic, service)
        body["on_chain"] = on_chain
        if revoke:
            body["revoke"] = True
        else:
            body.update(
                service_type=service_type,
                price=price,
                pricing_model=pricing_model,
                capabilities=capability or [],
                region=region,
                uri=uri,
            )
            if ttl is not None:
                body["ttl"] = ttl
        data = client.call("POST", "/v1/advertise", body)

        def human(out: Console) -> None:
            if revoke:
                out.print(f"revoked {data['revoked']} (tombstone stored at {data['stored']} nodes)")
                for txid in data.get("token_spends") or []:
                    out.print(f"token spent by {txid}", markup=False)
                if data.get("token_error"):
                    out.print(f"token not spent: {data['token_error']}", markup=False)
                return
            ad = data["advert"]
            name = ad.get("topic") or ad.get("service")
            out.print(f"advertised {ad['protocol']} {name} at {ad['uri']} (stored at {data['stored']} nodes)")
            if data.get("token"):
                out.print(f"on chain: {data['token']}", markup=False)
            elif data.get("token_error"):
                out.print(f"not on chain: {data['token_error']}", markup=False)

        emit(state, data, human)


def adverts(ctx: typer.Context, _json: JsonOption = False) -> None:
    """This node's live adverts."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/adverts")

        def human(out: Console) -> None:
            rows = [
                (
                    a["protocol"],
                    a.get("topic") or a.get("service"),
                    a["uri"],
                    a["pricing_model"],
                    a["price"],
                    when(a["expires"]),
                )
                for a in data["adverts"]
            ]
            print_rows(out, ["protocol", "name", "uri", "pricing", "price", "expires"], rows, empty="no adverts")

        emit(state, data, human)


def discover(
    ctx: typer.Context,
    topic: Topic = None,
    service: Service = None,
    service_type: Annotated[str, typer.Option("--service-type", help="Only hosts of this service type.")] = "",
    capability: Annotated[list[str] | None, typer.Option("--capability", help="Required capability.")] = None,
    max_price: Annotated[int | None, typer.Option("--max-price", min=0, help="Highest price in satoshis.")] = None,
    region: Annotated[str, typer.Option("--region", help="Only hosts in this region.")] = "",
    _json: JsonOption = False,
) -> None:
    """Every host advertising a topic or service, best score first; without one, every advert of a service type
    (--service-type) or capability (--capability) that matches the filters."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        body: dict[str, Any] = {
            **(_name(topic, service) if topic is not None or service is not None else {}),
            "service_type": service_type,
            "capabilities": capability or [],
            "region": region,
        }
        if max_price is not None:
            body["max_price"] = max_price
        data = client.call("POST", "/v1/discover", body)

        def human(out: Console) -> None:
            rows = [
                (h["identity_key"], " ".join(h["endpoints"]["swarm"]), h["pricing_model"], h["price"], h["score"])
                for h in data["hosts"]
            ]
            print_rows(out, ["identity", "swarm", "pricing", "price", "score"], rows, empty="no hosts found")

        emit(state, data, human)


Namespace = Annotated[str, typer.Option("--namespace", help="ship, slap, uhrp, stream, tag or debug.")]


@dht_app.command("get")
def dht_get(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name within the namespace.")],
    namespace: Namespace = "debug",
    _json: JsonOption = False,
) -> None:
    """Every record stored under namespace:name."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/dht/get", {"namespace": namespace, "name": name})

        def human(out: Console) -> None:
            rows = [
                (r["publisher"], r["seq"], when(r["expires"]), base64.b64decode(r["value_b64"])[:60])
                for r in data["records"]
            ]
            print_rows(out, ["publisher", "seq", "expires", "value"], rows, empty="no records")

        emit(state, data, human)


@dht_app.command("put")
def dht_put(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name within the namespace.")],
    value: Annotated[str, typer.Argument(help="Value (text).")],
    namespace: Namespace = "debug",
    ttl: Annotated[float, typer.Option("--ttl", help="Seconds until it expires.")] = 3600,
    _json: JsonOption = False,
) -> None:
    """Store our own signed record under namespace:name."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("POST", "/v1/dht/put", {"namespace": namespace, "name": name, "value": value, "ttl": ttl})
        emit(state, data, lambda out: out.print(f"stored (seq {data['seq']}) at {data['stored']} nodes"))


@dht_app.command("status")
def dht_status(ctx: typer.Context, _json: JsonOption = False) -> None:
    """The DHT endpoint, contacts and records of this node."""
    state: CliState = ctx.obj
    with cli_errors(state), control_client(state) as client:
        data = client.call("GET", "/v1/dht")
        emit_fields(state, data)
