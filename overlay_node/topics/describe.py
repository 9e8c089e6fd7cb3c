"""What an output's locking script says, for people and scripts: a SHIP or SLAP token's fields, a UHRP
advertisement's, another PushDrop script's raw fields, or just the script."""

from __future__ import annotations

from typing import Any

from overlay_node.crypto import pushdrop
from overlay_node.topics.ship import decode_ship_token
from overlay_node.topics.uhrp import decode_uhrp_token

__all__ = ["describe_output"]


def describe_output(script: bytes) -> dict[str, Any]:
    """The decoded fields of ``script`` (keys as the reference lookup services name them)."""
    try:
        ship = decode_ship_token(script)
    except ValueError:
        pass
    else:
        return {
            "protocol": ship.kind,
            "identityKey": ship.identity_key.hex(),
            "domain": ship.uri,
            "topic" if ship.kind == "SHIP" else "service": ship.name,
            "signature": ship.signature.hex(),
            "lockingKey": ship.locking_key.hex(),
            "linked": ship.is_linked(),
        }
    try:
        uhrp = decode_uhrp_token(script)
    except ValueError:
        pass
    else:
        return {
            "protocol": "UHRP",
            "hostIdentityKey": uhrp.host_identity_key.hex(),
            "uhrpUrl": uhrp.uhrp_url,
            "hash": uhrp.content_hash.hex(),
            "url": uhrp.url,
            "expiryTime": uhrp.expiry,
            "fileSize": uhrp.size,
            "signature": uhrp.signature.hex(),
            "lockingKey": uhrp.locking_key.hex(),
            "linked": uhrp.is_linked(),
        }
    try:
        token = pushdrop.decode(script)
    except ValueError:
        return {"script": script.hex()}
    return {
        "protocol": "pushdrop",
        "lockingKey": token.locking_key.hex(),
        "fields": [f.hex() for f in token.fields],
    }
