"""The chain tracker SPV checks ask: which merkle roots are those of the blocks at the heights a BEEF's paths name.

Two sources:
- the ledger's block headers (``GET {ledger}/v1/headers/{height}``, the devnet's route: a cluster's shared devnet
  or the one a lone node embeds), asked once per height and remembered (a block's root never changes here: the
  devnet does not reorganise);
- a Block Headers Service (``wallet.headers_url``, e.g. for real ARC): ``POST {url}/api/v1/chain/merkleroot/verify``
  with the claimed ``{blockHeight, merkleRoot}`` pairs, as the official SDK's ``BlockHeadersService`` tracker asks;
  a confirmed pair is remembered, an unconfirmed one is asked again next time (the service may catch up).

Either way the answer is a mapping height -> root (None: no such block, or not confirmed) for
:func:`overlay_node.chain.spv.verify_beef`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import httpx

from overlay_node.errors import ApiError, DialError
from overlay_node.services.arc import DevnetClient

logger = logging.getLogger(__name__)

__all__ = ["ChainTracker"]

_REMEMBERED = 100_000


class ChainTracker:
    """Merkle roots by height (see the module docstring).

    Args:
        ledger: the ledger's client (its ``header`` route), used when ``headers_url`` is empty.
        headers_url: a Block Headers Service base URL (empty: ask the ledger).
        api_key: its bearer token (empty: none).
        timeout: seconds per request.
    """

    def __init__(
        self, ledger: DevnetClient | None, *, headers_url: str = "", api_key: str = "", timeout: float = 30.0
    ) -> None:
        self._ledger = ledger
        self._headers_url = headers_url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._roots: dict[int, str] = {}

    async def roots(self, claims: Mapping[int, Collection[str]]) -> dict[int, str | None]:
        """The root of the block at each height of ``claims`` that is known (None otherwise); ``claims`` are the
        roots a BEEF's paths compute at each height.

        Raises:
            DialError: the source cannot be reached.
            ApiError: it answered something else than a header or a verdict.
        """
        out: dict[int, str | None] = {}
        todo: dict[int, Collection[str]] = {}
        for height, claimed in claims.items():
            known = self._roots.get(height)
            if known is not None:
                out[height] = known
            else:
                todo[height] = claimed
        if todo:
            found = await (self._verify(todo) if self._headers_url else self._ask_ledger(todo))
            for height in todo:
                root = found.get(height)
                out[height] = root
                if root is not None and len(self._roots) < _REMEMBERED:
                    self._roots[height] = root
        return out

    async def _ask_ledger(self, heights: Collection[int]) -> dict[int, str | None]:
        if self._ledger is None:
            raise DialError("no ledger to ask for block headers (set wallet.headers_url)")
        out: dict[int, str | None] = {}
        for height in heights:
            try:
                out[height] = (await self._ledger.header(height)).merkle_root
            except ApiError as exc:
                if exc.http_status != 404:
                    raise
                out[height] = None
        return out

    async def _verify(self, claims: Mapping[int, Collection[str]]) -> dict[int, str | None]:
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        out: dict[int, str | None] = {}
        url = f"{self._headers_url}/api/v1/chain/merkleroot/verify"
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            for height, claimed in claims.items():
                out[height] = None
                for root in claimed:
                    try:
                        response = await client.post(
                            url, json=[{"blockHeight": height, "merkleRoot": root}], headers=headers
                        )
                    except httpx.HTTPError as exc:
                        raise DialError(f"headers service {self._headers_url} unreachable: {exc}") from exc
                    if response.status_code != 200:
                        raise ApiError(
                            f"headers service answered {response.status_code}", code="bad_answer", status=502
                        )
                    try:
                        state = response.json().get("confirmationState")
                    except (ValueError, AttributeError) as exc:
                        raise ApiError(
                            f"headers service answer is not JSON: {exc}", code="bad_answer", status=502
                        ) from exc
                    if state == "CONFIRMED":
                        out[height] = root
                        break
        return out
