"""Building real transactions for overlay tests: coins from a devnet faucet paid to a known key, chains of P2PKH
spends, and their BEEF (with merkle paths once mined)."""

from __future__ import annotations

from dataclasses import dataclass

from overlay_node.chain.formats import BeefEntry, encode_beef, merge_entries, parse_submission
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.crypto.sighash import P2pkhSpend, outpoint_bytes, sign_p2pkh, txid_of_raw
from overlay_node.services.arc import DevnetClient
from tests.plugins import demo


@dataclass(frozen=True, slots=True)
class Coin:
    """Output ``vout`` of ``txid``, with a BEEF whose last transaction is ``txid``."""

    txid: str
    vout: int
    satoshis: int
    script: bytes
    beef: bytes
    raw: bytes


class Spender:
    """Spends P2PKH coins of one key, building each child's BEEF from its parent's."""

    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.script = p2pkh_for_key(self.identity.public_key)

    async def fund(self, devnet: DevnetClient, satoshis: int) -> Coin:
        paid = await devnet.faucet(satoshis, pubkey=self.identity.public_key.hex())
        return Coin(paid.txid, paid.vout, paid.satoshis, paid.locking_script, paid.beef, paid.raw)

    def spend(
        self,
        coin: Coin,
        outputs: list[tuple[bytes, int]] | None = None,
        *,
        fee: int = 1,
        parent_beef: bytes | None = None,
    ) -> tuple[Coin, bytes]:
        """A transaction spending ``coin`` to ``outputs`` (default: the rest back to this key, and tm_demo's marker),
        its first output as a coin, and its BEEF (``parent_beef`` in place of the coin's own, e.g. one with a merkle
        path)."""
        outputs = outputs or [(self.script, coin.satoshis - fee), (demo.MARKER, 0)]
        raw = sign_p2pkh(
            [P2pkhSpend(outpoint_bytes(coin.txid, coin.vout), coin.script, coin.satoshis, self.identity.private_bytes)],
            outputs,
        )
        txid = txid_of_raw(raw)
        entries = [*merge_entries([parse_submission(parent_beef or coin.beef)]), BeefEntry(txid, raw)]
        beef = encode_beef(entries, version=1)
        return Coin(txid, 0, outputs[0][1], outputs[0][0], beef, raw), beef


async def proven_beef(devnet: DevnetClient, coin: Coin) -> bytes:
    """A BEEF of ``coin``'s transaction alone with its merkle path (mine it first)."""
    status = await devnet.status(coin.txid)
    assert status.mined, status
    assert status.merkle_path, status
    return encode_beef([BeefEntry(coin.txid, coin.raw, bytes.fromhex(status.merkle_path))], version=1)
