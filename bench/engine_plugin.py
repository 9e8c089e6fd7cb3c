"""``tm_bench`` / ``ls_bench``: the overlay engine anchor's plug-ins (``/work/shared/anchors/overlay-engine/lib.mjs``)
as a node loads them, for ``bench/bench_engine.py``.

- ``tm_bench`` admits the outputs whose locking script is P2PKH to the anchor's fixed known key and retains no
  previous coin (``coinsToRetain: []``: a spent coin leaves the topic).
- ``ls_bench`` answers ``{"txid", "outputIndex"}`` (that output while it is an unspent output of the topic) and
  ``{"findAll": true, "limit"}`` (the first ``limit`` unspent outputs, oldest first, as the anchor's
  ``findUTXOsForTopic``). It indexes each admitted output by its outpoint and does not keep spent ones.

A node names them in its config (the harness puts the repository root on the node process's ``sys.path``)::

    overlay.topic_managers = ["tm_bench=bench.engine_plugin:BenchTopicManager"]
    overlay.lookup_services = ["ls_bench=bench.engine_plugin:BenchLookupService"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coincurve import PrivateKey

from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.errors import BadRequest
from overlay_node.topics.plugins import (
    Admittance,
    AdmittedOutput,
    FormulaItem,
    LookupIndex,
    Metadata,
    PluginContext,
    TaggedTx,
)

TOPIC = "tm_bench"
SERVICE = "ls_bench"
#: the anchor's fixed keys: ``PrivateKey.fromHex('1'.repeat(63) + '7')`` and ``('2'.repeat(63) + '9')``
KNOWN_SECRET = bytes.fromhex("1" * 63 + "7")
OTHER_SECRET = bytes.fromhex("2" * 63 + "9")
KNOWN_PUBLIC = PrivateKey(KNOWN_SECRET).public_key.format(compressed=True)
OTHER_PUBLIC = PrivateKey(OTHER_SECRET).public_key.format(compressed=True)
#: ``OP_DUP OP_HASH160 <hash160(known key)> OP_EQUALVERIFY OP_CHECKSIG``
KNOWN_LOCKING = p2pkh_for_key(KNOWN_PUBLIC)
OTHER_LOCKING = p2pkh_for_key(OTHER_PUBLIC)

#: how the node's config names them
TOPIC_ENTRY = f"{TOPIC}=bench.engine_plugin:BenchTopicManager"
SERVICE_ENTRY = f"{SERVICE}=bench.engine_plugin:BenchLookupService"


class BenchTopicManager:
    """Admits the outputs paying the known key; retains nothing."""

    def __init__(self, context: PluginContext) -> None:
        self.name = context.name

    def admissible_outputs(self, tx: TaggedTx, _previous_coins: Sequence[int]) -> Admittance:
        admit = tuple(i for i, out in enumerate(tx.tx.outputs) if out.script == KNOWN_LOCKING)
        return Admittance(outputs_to_admit=admit, coins_to_retain=())

    def needed_inputs(self, _tx: TaggedTx) -> Sequence[tuple[str, int]]:
        return ()

    def documentation(self) -> str:
        return "Admits P2PKH outputs paying the benchmark key."

    def metadata(self) -> Metadata:
        return Metadata(name=TOPIC, short_description="benchmark P2PKH topic")


class BenchLookupService:
    """The unspent ``tm_bench`` outputs by outpoint, or the first ``limit`` of them."""

    keeps_spent = False

    def __init__(self, context: PluginContext) -> None:
        self.name = context.name

    def index(self, output: AdmittedOutput) -> Mapping[str, Sequence[str]] | None:
        if output.topic != TOPIC:
            return None
        return {"outpoint": [f"{output.txid}.{output.vout}"]}

    async def lookup(self, query: Any, index: LookupIndex) -> Sequence[FormulaItem]:
        if not isinstance(query, dict):
            raise BadRequest("unsupported query")
        if isinstance(query.get("txid"), str):
            vout = query.get("outputIndex", 0)
            if not isinstance(vout, int) or isinstance(vout, bool) or vout < 0:
                raise BadRequest("outputIndex must be a non-negative integer")
            found = await index.find({"outpoint": [f"{query['txid']}.{vout}"]}, limit=1)
        elif query.get("findAll") is True:
            limit = query.get("limit", 10)
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise BadRequest("limit must be a non-negative integer")
            found = await index.find({}, limit=limit, newest_first=False)
        else:
            raise BadRequest("unsupported query")
        return [FormulaItem(txid=txid, vout=vout) for txid, vout in found]

    def documentation(self) -> str:
        return "Lookup of benchmark UTXOs."

    def metadata(self) -> Metadata:
        return Metadata(name=SERVICE, short_description="benchmark lookup")
