"""``tm_demo`` / ``ls_demo``: a user topic as a third party would write one, for the engine's tests.

``tm_demo`` admits the P2PKH outputs of transactions that carry the demo marker (an ``OP_FALSE OP_RETURN "demo"``
output, as an application tags its own transactions) and keeps every spent demo coin in history (BRC-64), so a
chain of spends is answered with its ancestry. ``ls_demo`` indexes each admitted output by its txid and by the hash
its script pays; its queries: ``{"txid": ..., "history": N?}``, ``{"pubkeyHash": ...}``, ``{"findAll": true}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from overlay_node.crypto.scripts import is_p2pkh
from overlay_node.errors import BadRequest
from overlay_node.topics.plugins import (
    Admittance,
    AdmittedOutput,
    FormulaItem,
    LookupIndex,
    Metadata,
    PluginContext,
    SpentOutput,
    TaggedTx,
)

#: the output that marks a transaction as the demo application's
MARKER = b"\x00\x6a\x04demo"


class DemoTopicManager:
    """Admits the P2PKH outputs of marked transactions; retains every previous coin."""

    def __init__(self, context: PluginContext) -> None:
        self.name = context.name

    def admissible_outputs(self, tx: TaggedTx, previous_coins: Sequence[int]) -> Admittance:
        outputs = tx.tx.outputs
        if not any(out.script == MARKER for out in outputs):
            return Admittance()
        admit = tuple(i for i, out in enumerate(outputs) if is_p2pkh(out.script))
        return Admittance(outputs_to_admit=admit, coins_to_retain=tuple(previous_coins))

    def needed_inputs(self, _tx: TaggedTx) -> Sequence[tuple[str, int]]:
        return ()

    def documentation(self) -> str:
        return "# tm_demo\n\nP2PKH outputs of transactions marked `OP_FALSE OP_RETURN demo`; spent coins are kept."

    def metadata(self) -> Metadata:
        return Metadata(name="Demo topic", short_description="P2PKH outputs, with history", version="1.0")


class DemoLookupService:
    """Indexes tm_demo outputs by txid and public key hash; remembers what the optional hooks told it."""

    keeps_spent = False

    def __init__(self, context: PluginContext) -> None:
        self.name = context.name
        self.events: list[tuple[str, str, int]] = []

    async def output_admitted(self, output: AdmittedOutput) -> None:
        if output.topic == "tm_demo":
            self.events.append(("admitted", output.txid, output.vout))

    async def output_spent(self, spent: SpentOutput) -> None:
        if spent.topic == "tm_demo":
            self.events.append(("spent", spent.txid, spent.vout))

    async def output_evicted(self, txid: str, vout: int, topic: str) -> None:
        if topic == "tm_demo":
            self.events.append(("evicted", txid, vout))

    def index(self, output: AdmittedOutput) -> Mapping[str, Sequence[str]] | None:
        if output.topic != "tm_demo":
            return None
        return {"txid": [output.txid], "pubkeyHash": [output.script[3:23].hex()]}

    async def lookup(self, query: Any, index: LookupIndex) -> Sequence[FormulaItem]:
        if not isinstance(query, dict):
            raise BadRequest("ls_demo takes a JSON object")
        history = query.get("history")
        if history is not None and (not isinstance(history, int) or isinstance(history, bool) or history < 0):
            raise BadRequest("history must be a non-negative integer")
        if query.get("findAll") is True:
            found = await index.find({})
        elif isinstance(query.get("txid"), str):
            found = await index.find({"txid": [query["txid"]]})
        elif isinstance(query.get("pubkeyHash"), str):
            found = await index.find({"pubkeyHash": [query["pubkeyHash"]]})
        else:
            raise BadRequest("ls_demo queries: {txid}, {pubkeyHash} or {findAll: true}")
        return [FormulaItem(txid=t, vout=v, history=history, context=b"demo") for t, v in found]

    def documentation(self) -> str:
        return "# ls_demo\n\nQueries: `{txid}`, `{pubkeyHash}`, `{findAll: true}`."

    def metadata(self) -> Metadata:
        return Metadata(name="Demo lookup", short_description="tm_demo outputs by txid")


#: how a node config names them: overlay.topic_managers = ["tm_demo=tests.plugins.demo:DemoTopicManager"]
TOPIC = "tm_demo=tests.plugins.demo:DemoTopicManager"
SERVICE = "ls_demo=tests.plugins.demo:DemoLookupService"
