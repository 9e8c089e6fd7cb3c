"""The direct P2PKH signer (``crypto/sighash``) and ``build_transaction`` on it, held byte-identical to bsv-sdk's
``Transaction.sign`` with ``P2PKH().unlock``, valid under bsv-sdk's script interpreter, and accepted by the
payee's fast check (which shares the digest function)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from bsv.keys import PrivateKey as BsvPrivateKey
from bsv.script.script import Script
from bsv.script.type import P2PKH
from bsv.transaction import Transaction, TransactionInput, TransactionOutput
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.chain.formats import SourceOutput, parse_transaction
from overlay_node.chain.refusals import Refusal
from overlay_node.chain.validation import Policy, check_by_interpreter, check_transaction, checked_fee, fast_check
from overlay_node.crypto.bump import varint_bytes
from overlay_node.crypto.keys import SECP256K1_N, sign_digest
from overlay_node.crypto.scripts import hash160
from overlay_node.crypto.sighash import (
    SIGHASH_ALL_FORKID,
    P2pkhSpend,
    bip143_digest,
    outpoint_bytes,
    serialize_outputs,
    sha256d,
    sign_p2pkh,
    txid_of_raw,
)
from overlay_node.services.wallet_build import build_transaction
from overlay_node.store.records import UtxoRecord

#: no fee floor: the examples' fees are arbitrary (the fee rule has its own tests)
FREE = Policy(mining_fee_satoshis=0)


def _p2pkh(secret: bytes) -> bytes:
    public = PrivateKey(secret).public_key.format(compressed=True)
    return b"\x76\xa9\x14" + hash160(public) + b"\x88\xac"


@dataclass(frozen=True)
class Case:
    coins: list[UtxoRecord]
    secrets: dict[tuple[str, int], bytes]
    outputs: list[tuple[bytes, int]]

    def key_for(self, coin: UtxoRecord) -> bytes:
        return self.secrets[coin.outpoint]

    @property
    def fee(self) -> int:
        return sum(c.satoshis for c in self.coins) - sum(s for _, s in self.outputs)

    @property
    def sources(self) -> dict[tuple[str, int], SourceOutput]:
        return {c.outpoint: SourceOutput(satoshis=c.satoshis, locking_script=c.script) for c in self.coins}


_secrets = st.integers(1, SECP256K1_N - 1).map(lambda n: n.to_bytes(32, "big"))
_output_scripts = st.one_of(
    _secrets.map(_p2pkh),
    st.binary(min_size=0, max_size=40),
    st.binary(min_size=253, max_size=300),  # a 3-byte script length
)


@st.composite
def _cases(
    draw: st.DrawFn, *, max_vout: int = 2**31 - 1, output_scripts: st.SearchStrategy[bytes] = _output_scripts
) -> Case:
    """Coins, keys and outputs. bsv-sdk's native interpreter takes an output index as a signed 32-bit integer
    (it raises OverflowError from 2**31 on), so the examples it checks keep below that by default."""
    keys = draw(st.lists(_secrets, min_size=1, max_size=3))  # inputs may share a key
    txids = draw(
        st.lists(st.binary(min_size=32, max_size=32).filter(any).map(bytes.hex), min_size=1, max_size=3, unique=True)
    )
    coins: list[UtxoRecord] = []
    secrets: dict[tuple[str, int], bytes] = {}
    for txid in txids:
        secret = draw(st.sampled_from(keys))
        coin = UtxoRecord(
            txid=txid,
            vout=draw(st.integers(0, max_vout)),
            satoshis=draw(st.integers(1_000_000, 2**50)),
            script=_p2pkh(secret),
            protocol="2-test",
            key_id="k",
            counterparty="self",
            origin="faucet",
        )
        coins.append(coin)
        secrets[coin.outpoint] = secret
    outputs = draw(st.lists(st.tuples(output_scripts, st.integers(1, 300_000)), min_size=1, max_size=4))
    return Case(coins, secrets, outputs)


def _reference(case: Case) -> Transaction:
    """The same transaction built and signed with bsv-sdk's objects."""
    inputs = []
    for coin in case.coins:
        tx_in = TransactionInput(
            source_txid=coin.txid,
            source_output_index=coin.vout,
            unlocking_script_template=P2PKH().unlock(BsvPrivateKey(case.key_for(coin))),
        )
        tx_in.satoshis = coin.satoshis
        tx_in.locking_script = Script(coin.script)
        inputs.append(tx_in)
    tx = Transaction(inputs, [TransactionOutput(Script(script), sats) for script, sats in case.outputs])
    tx.sign()
    return tx


@settings(max_examples=100, deadline=None)
@given(_cases())
def test_build_transaction_is_bsv_sdk_byte_for_byte_and_valid(case: Case) -> None:
    built = build_transaction(case.coins, case.outputs, case.key_for, fee=case.fee)
    reference = _reference(case)
    assert built.raw == bytes(reference.serialize())
    # the same with the public keys given (the wallet remembers those of the change it made)
    given_keys = build_transaction(
        case.coins,
        case.outputs,
        case.key_for,
        fee=case.fee,
        public_for=lambda c: PrivateKey(case.key_for(c)).public_key.format(compressed=True),
    )
    assert given_keys.raw == built.raw
    assert built.txid == str(reference.txid()) == txid_of_raw(built.raw)
    assert built.spends == tuple(case.coins)
    assert built.fee == case.fee
    assert built.outputs == tuple(SourceOutput(satoshis=s, locking_script=script) for script, s in case.outputs)
    # every input passes bsv-sdk's interpreter, and the payee's fast path agrees (it takes P2PKH outputs only:
    # other scripts go to the interpreter's path)
    assert check_by_interpreter(parse_transaction(built.raw), case.sources, FREE).fee == case.fee
    plain = all(len(script) == 25 and script[:3] == b"\x76\xa9\x14" for script, _ in case.outputs)
    assert fast_check(built.raw, case.sources, FREE) == (case.fee if plain else None)
    # and the check every caller runs (its fast path first) records the same transaction
    checked = check_transaction(parse_transaction(built.raw), case.sources, FREE)
    assert checked == check_by_interpreter(parse_transaction(built.raw), case.sources, FREE)
    assert checked_fee(parse_transaction(built.raw), case.sources, FREE) == case.fee


@settings(max_examples=50, deadline=None)
@given(_cases(max_vout=2**32 - 1))
def test_digest_is_bsv_sdk_preimage_hashed(case: Case) -> None:
    reference = _reference(case)
    built = build_transaction(case.coins, case.outputs, case.key_for, fee=case.fee)
    assert built.raw == bytes(reference.serialize())
    outpoints = [outpoint_bytes(c.txid, c.vout) for c in case.coins]
    sequence = b"\xff\xff\xff\xff"
    hash_prevouts = sha256d(b"".join(outpoints))
    hash_sequence = sha256d(sequence * len(outpoints))
    hash_outputs = sha256d(serialize_outputs(case.outputs))
    version, locktime = (1).to_bytes(4, "little"), bytes(4)
    for i, coin in enumerate(case.coins):
        digest = bip143_digest(
            version,
            hash_prevouts,
            hash_sequence,
            outpoints[i],
            coin.script,
            coin.satoshis,
            sequence,
            hash_outputs,
            locktime,
            SIGHASH_ALL_FORKID,
        )
        assert digest == sha256d(bytes(reference.preimage(i)))


@settings(max_examples=30, deadline=None)
@given(_cases(output_scripts=_secrets.map(_p2pkh)), st.data())
def test_a_tampered_output_is_refused(case: Case, data: st.DataObject) -> None:
    built = build_transaction(case.coins, case.outputs, case.key_for, fee=case.fee)
    assert fast_check(built.raw, case.sources, FREE) == case.fee
    # flip bits of an output's key hash: the amounts still balance and the script is still P2PKH, only the
    # signatures no longer match
    which = data.draw(st.integers(0, len(case.outputs) - 1), label="output")
    at = _outputs_offset(built.raw, len(case.coins)) + sum(
        8 + len(varint_bytes(len(script))) + len(script) for script, _ in case.outputs[:which]
    )
    at += 8 + 1 + data.draw(st.integers(3, 22), label="byte")
    tampered = bytearray(built.raw)
    tampered[at] ^= data.draw(st.integers(1, 255), label="mask")
    assert fast_check(bytes(tampered), case.sources, FREE) is None
    with pytest.raises(Refusal, match="script failed"):
        check_by_interpreter(parse_transaction(bytes(tampered)), case.sources, FREE)
    with pytest.raises(Refusal, match="script failed"):  # the fast path declines it; the interpreter refuses
        check_transaction(parse_transaction(bytes(tampered)), case.sources, FREE)
    with pytest.raises(Refusal, match="script failed"):
        checked_fee(parse_transaction(bytes(tampered)), case.sources, FREE)


def _outputs_offset(raw: bytes, n_inputs: int) -> int:
    """Where the first output starts in a transaction with ``n_inputs`` P2PKH inputs (fewer than 253)."""
    pos = 5
    for _ in range(n_inputs):
        pos += 36
        pos += 1 + raw[pos]  # every unlocking script here is shorter than 253 bytes
        pos += 4
    return pos + 1  # output counts here are below 253: one byte


def test_sign_p2pkh_writes_the_documented_shape() -> None:
    secret = (7).to_bytes(32, "big")
    script = _p2pkh(secret)
    spend = P2pkhSpend(outpoint_bytes("ab" * 32, 3), script, 5_000, secret)
    raw = sign_p2pkh([spend], [(script, 4_000), (b"\x00\x6a", 0)])
    assert raw[:4] == b"\x01\x00\x00\x00"
    assert raw[-4:] == bytes(4)
    assert raw[5:41] == bytes.fromhex("ab" * 32) + b"\x03\x00\x00\x00"
    unlock_len = raw[41]
    unlocking = raw[42 : 42 + unlock_len]
    assert unlocking[unlocking[0]] == SIGHASH_ALL_FORKID  # the signature push ends with the sighash byte
    assert unlocking[-34:] == b"\x21" + PrivateKey(secret).public_key.format(compressed=True)
    assert raw[42 + unlock_len : 46 + unlock_len] == b"\xff\xff\xff\xff"
    assert raw[46 + unlock_len :] == b"\x02" + serialize_outputs([(script, 4_000), (b"\x00\x6a", 0)]) + bytes(4)


def test_build_transaction_refuses_unbalanced_amounts() -> None:
    secret = (9).to_bytes(32, "big")
    coin = UtxoRecord(
        txid="cd" * 32,
        vout=0,
        satoshis=1_000,
        script=_p2pkh(secret),
        protocol="2-test",
        key_id="k",
        counterparty="self",
        origin="faucet",
    )
    with pytest.raises(ValueError, match="balance"):
        build_transaction([coin], [(coin.script, 999)], lambda _: secret, fee=2)


@pytest.mark.parametrize("secret", [bytes(32), SECP256K1_N.to_bytes(32, "big"), b"\x01" * 33])
def test_sign_p2pkh_refuses_an_invalid_secret(secret: bytes) -> None:
    spend = P2pkhSpend(outpoint_bytes("ab" * 32, 0), _p2pkh((3).to_bytes(32, "big")), 1_000, secret)
    with pytest.raises(ValueError, match=r"[Ss]ecret"):
        sign_p2pkh([spend], [(b"\x51", 999)])


@settings(max_examples=50, deadline=None)
@given(_secrets, st.binary(min_size=32, max_size=32))
def test_sign_digest_is_bsv_sdk_signing(secret: bytes, digest: bytes) -> None:
    """Quotes, receipts and inputs are signed without a key object; bsv-sdk signs the same bytes."""
    assert sign_digest(secret, digest) == bytes(BsvPrivateKey(secret).sign(digest, hasher=None))
