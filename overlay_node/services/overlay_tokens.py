"""This node's tokens on chain: SHIP/SLAP adverts (BRC-88) and UHRP advertisements (BRC-26), created, submitted to
the overlay and revoked.

Theory of operation:
1. **Create.** The token's PushDrop script (signed by this node's identity as the reference advertisers sign, see
   ``topics/ship.py`` and ``topics/uhrp.py``) is paid 1 satoshi by a wallet transaction. The wallet writes the
   transaction ahead (coins spent, change pending, a settlement job), then it is submitted to this node's own engine
   under ``tm_ship`` / ``tm_slap`` / ``tm_uhrp`` in ``current-tx`` mode: the engine broadcasts it to ARC before
   storing it, and propagates it to the other hosts of that topic (``services/overlay_network.py``). Only once the
   engine admitted it is the token recorded as ours; a refusal undoes the wallet's write.
2. **Revoke.** Each of our active tokens for the name is spent (a PushDrop unlock: the signature alone, with the
   token's own key) together with a wallet coin for the fee, and that spend is submitted to the same topic, which
   drops the token (the lookup services forget it), and propagated like any admission.
3. A token names a URI the official rules accept: the node's public https origin (``http.public_url`` or the bound
   address with TLS on). A node without TLS puts no token on chain unless ``overlay.allow_http`` says it is a local
   test node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import trio

from overlay_node.clock import wall_time
from overlay_node.crypto import pushdrop
from overlay_node.crypto.brc42 import ProtocolID
from overlay_node.crypto.keys import Identity
from overlay_node.errors import BadRequest, OverlayError
from overlay_node.protocol.adverts import kind_of
from overlay_node.services.overlay_engine import OverlayEngine
from overlay_node.services.wallet import ForeignInput, PreparedTx, Wallet
from overlay_node.store.db import Store
from overlay_node.store.overlay import OwnToken
from overlay_node.store.wallet import HistoryRecord
from overlay_node.topics.ship import SHIP_PROTOCOL, SLAP_PROTOCOL, is_advertisable_uri, ship_token
from overlay_node.topics.uhrp import UHRP_PROTOCOL, is_download_url, uhrp_token

logger = logging.getLogger(__name__)

__all__ = ["TOKEN_SATOSHIS", "OverlayTokens"]

#: what a token output holds (the reference advertisers' AD_TOKEN_VALUE)
TOKEN_SATOSHIS = 1
TokenKind = Literal["SHIP", "SLAP", "UHRP"]
_TOPIC: dict[str, str] = {"SHIP": "tm_ship", "SLAP": "tm_slap", "UHRP": "tm_uhrp"}
_PROTOCOL: dict[str, ProtocolID] = {"SHIP": SHIP_PROTOCOL, "SLAP": SLAP_PROTOCOL, "UHRP": UHRP_PROTOCOL}


class OverlayTokens:
    """Create and revoke this node's tokens (see the module docstring).

    Args:
        public_url: this node's public http origin, once bound.
        allow_http: ``overlay.allow_http`` (a local test node may name a plain http:// URI).
    """

    def __init__(
        self,
        identity: Identity,
        store: Store,
        wallet: Wallet,
        engine: OverlayEngine,
        *,
        public_url: Callable[[], str],
        allow_http: bool,
        wall_clock: Callable[[], float] = wall_time,
    ) -> None:
        self._wall = wall_clock
        self._identity = identity
        self._store = store
        self._wallet = wallet
        self._engine = engine
        self._public_url = public_url
        self._allow_http = allow_http
        self._lock = trio.Lock()  # one token transaction at a time: they spend each other's change

    def advert_uri(self, uri: str = "") -> str:
        """The URI a SHIP/SLAP token of this node names: ``uri``, else the http port's public origin.

        Raises:
            BadRequest: not one the official rules accept (not https, localhost, a path).
        """
        uri = (uri or self._public_url()).rstrip("/")
        if not is_advertisable_uri(uri, allow_http=self._allow_http):
            raise BadRequest(
                f"cannot put a token on chain for {uri}: SHIP/SLAP tokens name an https:// URI that is not localhost "
                "(serve TLS on the http port: `overlay-node init --tls`, or set http.tls_cert/http.tls_key and "
                "http.public_url; a local test node may set overlay.allow_http = true)"
            )
        return uri

    def content_url(self, content_hash: bytes) -> str:
        """Where this node's gateway serves the content, as a UHRP advertisement names it."""
        url = f"{self._public_url().rstrip('/')}/uhrp/{content_hash.hex()}"
        if not is_download_url(url, allow_http=self._allow_http):
            raise BadRequest(f"cannot advertise content at {url}: UHRP advertisements name an https:// URL")
        return url

    async def advertise(self, name: str, *, uri: str = "") -> OwnToken:
        """Put a SHIP (``tm_*``) or SLAP (``ls_*``) token for ``name`` (naming ``uri``, else this node's public
        origin) on chain and into the overlay.

        Raises:
            BadRequest: a bad name, no acceptable URI, or the overlay refused it.
            InsufficientFunds: the wallet cannot pay for it.
        """
        kind = kind_of(name)
        script = ship_token(self._identity, kind, self.advert_uri(uri), name)
        return await self._create(kind, name, script)

    async def advertise_content(self, content_hash: bytes, size: int, expiry: int) -> OwnToken:
        """Put a UHRP advertisement for content this node holds on chain and into the overlay."""
        if size < 1 or expiry < 1:
            raise BadRequest("a UHRP advertisement needs a size and an expiry of at least 1")
        script = uhrp_token(self._identity, content_hash, self.content_url(content_hash), expiry, size)
        return await self._create("UHRP", content_hash.hex(), script)

    async def tokens(self, kind: str, name: str | None = None) -> list[OwnToken]:
        return await self._store.own_tokens.active(kind, name)

    async def revoke(self, kind: str, name: str) -> list[str]:
        """Spend every active token of ours for ``name``; the txids of the spends.

        Raises:
            InsufficientFunds: no coin to pay the fee.
            BadRequest: the overlay refused a spend.
        """
        protocol = _PROTOCOL.get(kind)
        if protocol is None:
            raise BadRequest(f"no tokens of kind {kind!r}: SHIP, SLAP or UHRP")
        spent: list[str] = []
        for token in await self._store.own_tokens.active(kind, name):
            extra = ForeignInput(
                txid=token.txid,
                vout=token.vout,
                satoshis=token.satoshis,
                script=token.script,
                secret=pushdrop.token_secret(self._identity, protocol),
            )
            async with self._lock:
                prepared = await self._wallet.prepare([], recipient=None, extra_inputs=[extra])
                await self._commit(prepared, token.topic, kind="revoke", resource=f"{kind.lower()}:{name}")
            await self._store.own_tokens.revoked(token.txid, token.vout, prepared.txid)
            spent.append(prepared.txid)
        return spent

    async def _create(self, kind: TokenKind, name: str, script: bytes) -> OwnToken:
        topic = _TOPIC[kind]
        if topic not in self._engine.managers:
            raise BadRequest(
                f"this node does not host {topic}: add it to overlay.topic_managers to put tokens on chain"
            )
        async with self._lock:
            prepared = await self._wallet.prepare([(script, TOKEN_SATOSHIS)], recipient=None)
            steak = await self._commit(prepared, topic, kind="token", resource=f"{kind.lower()}:{name}")
        if 0 not in steak.get(topic, {}).get("outputsToAdmit", []):
            # spent on chain, but the topic would not take it: a bug of ours, not the user's
            raise OverlayError(f"{topic} did not admit this node's own {kind} token {prepared.txid}")
        token = OwnToken(
            txid=prepared.txid,
            vout=0,
            kind=kind,
            name=name,
            topic=topic,
            script=script,
            satoshis=TOKEN_SATOSHIS,
            created_at=self._wall(),
        )
        await self._store.own_tokens.add(token)
        logger.info("%s token for %s on chain: %s", kind, name, token.outpoint)
        return token

    async def _commit(
        self, prepared: PreparedTx, topic: str, *, kind: str, resource: str
    ) -> dict[str, dict[str, list[int]]]:
        """Write ``prepared`` ahead in the wallet, submit it to ``topic`` here, and settle the wallet's side."""
        history = HistoryRecord(
            txid=prepared.txid, direction="out", kind=kind, amount=prepared.amount, fee=prepared.fee, resource=resource
        )
        await self._wallet.begin(prepared, history)
        try:
            steak = await self._engine.submit(prepared.beef, [topic])
        except BadRequest:
            # refused before anything was stored, a broadcast refused for good included: the coins are ours again
            await self._wallet.abort(prepared)
            raise
        except BaseException as exc:
            # it may be on chain (broadcast, then the store failed): the settlement queue watches for it
            self._wallet.unanswered(prepared, f"{topic} submission failed: {exc!r}")
            raise
        self._wallet.sent(prepared, None, detail=f"{topic} admitted it")
        return steak
