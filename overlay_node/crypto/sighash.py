"""BSV signature digests (BIP143 with FORKID) and the signing of transactions that spend P2PKH coins, straight
from bytes. Pure and fast: a paid stream signs a transaction per packet. Per input the floor is two EC
operations in libsecp256k1 (the signature and the public key, about 45 µs together); building with bsv-sdk's
objects adds about 30 µs of object churn to that, this about 10.

The digest is shared by the signer here and by the payee's fast verifier (``chain/validation.fast_check``),
which takes the three hashes of a received transaction from its raw bytes and calls :func:`bip143_digest` per
input.

What :func:`sign_p2pkh` writes is exactly what bsv-sdk writes for the same spend (``Transaction`` with
``P2PKH().unlock(key)`` on every input, then ``sign()``): version 1, every sequence 0xffffffff, locktime 0,
SIGHASH_ALL|FORKID, unlocking scripts ``<DER signature + 0x41> <33-byte compressed key>`` with RFC 6979 nonces
and low S (libsecp256k1 through coincurve, as bsv-sdk's native backend). ``tests/unit/test_sighash.py`` holds the
two byte-identical.

:func:`sign_transaction` signs the same way for inputs of either unlock form: ``p2pkh`` as above, or ``pushdrop``
(``<DER signature + 0x41>`` alone, how a PushDrop token, whose locking script holds its key, is spent: creating
and revoking SHIP/SLAP/UHRP tokens). ``tests/unit/test_pushdrop.py`` holds a P2PKH coin and a token spent together
valid under bsv-sdk's interpreter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from coincurve import PublicKey

from overlay_node.crypto.bump import sha256d, varint_bytes
from overlay_node.crypto.keys import sign_digest

__all__ = [
    "SIGHASH_ALL_FORKID",
    "P2pkhSpend",
    "Spend",
    "UnlockForm",
    "bip143_digest",
    "outpoint_bytes",
    "serialize_outputs",
    "sha256d",
    "sign_p2pkh",
    "sign_transaction",
    "txid_of_raw",
]

#: SIGHASH_ALL | SIGHASH_FORKID: the signature commits to every input and every output
SIGHASH_ALL_FORKID = 0x41

_VERSION = (1).to_bytes(4, "little")
_LOCKTIME = bytes(4)
_SEQUENCE = b"\xff\xff\xff\xff"
_SIGHASH_BYTE = bytes([SIGHASH_ALL_FORKID])
_KEY_PUSH = b"\x21"  # a direct push of the 33-byte compressed key


def txid_of_raw(raw: bytes) -> str:
    """The txid (display hex) of a serialized transaction."""
    return sha256d(raw)[::-1].hex()


def outpoint_bytes(txid: str, vout: int) -> bytes:
    """An outpoint as a transaction input carries it: the txid in internal byte order, then ``vout``."""
    return bytes.fromhex(txid)[::-1] + vout.to_bytes(4, "little")


def bip143_digest(
    version: bytes,
    hash_prevouts: bytes,
    hash_sequence: bytes,
    outpoint: bytes,
    script_code: bytes,
    satoshis: int,
    sequence: bytes,
    hash_outputs: bytes,
    locktime: bytes,
    sighash_type: int,
) -> bytes:
    """The digest an input's signature signs (BIP143 as BSV uses it, with FORKID).

    Args:
        version: the transaction's 4 version bytes.
        hash_prevouts: sha256d of every input's 36-byte outpoint, in order (SIGHASH_ALL without ANYONECANPAY).
        hash_sequence: sha256d of every input's 4 sequence bytes, in order (SIGHASH_ALL).
        outpoint: the signing input's 36-byte outpoint.
        script_code: the locking script the input spends (without its length; no OP_CODESEPARATOR handling).
        satoshis: the value of the output the input spends.
        sequence: the signing input's 4 sequence bytes.
        hash_outputs: sha256d of the serialized outputs (without their count) (SIGHASH_ALL).
        locktime: the transaction's 4 locktime bytes.
        sighash_type: the sighash type, e.g. :data:`SIGHASH_ALL_FORKID`.

    Returns:
        sha256d of the preimage (32 bytes), what ECDSA signs as is.
    """
    return sha256d(
        b"".join(
            (
                version,
                hash_prevouts,
                hash_sequence,
                outpoint,
                varint_bytes(len(script_code)),
                script_code,
                satoshis.to_bytes(8, "little"),
                sequence,
                hash_outputs,
                locktime,
                sighash_type.to_bytes(4, "little"),
            )
        )
    )


def serialize_outputs(outputs: Sequence[tuple[bytes, int]]) -> bytes:
    """Outputs ``(locking script, satoshis)`` as a transaction carries them, without their count."""
    return b"".join(sats.to_bytes(8, "little") + varint_bytes(len(script)) + script for script, sats in outputs)


@dataclass(frozen=True, slots=True)
class P2pkhSpend:
    """An input to sign: the coin it spends and the coin's 32-byte private key.

    ``locking_script`` is the coin's script (a P2PKH script for the result to be valid: it is signed as the
    script code, not checked).
    """

    outpoint: bytes
    locking_script: bytes
    satoshis: int
    secret: bytes
    #: the secret's compressed public key when the caller has it (else it is computed: one EC multiplication)
    public_key: bytes | None = None


def sign_p2pkh(spends: Sequence[P2pkhSpend], outputs: Sequence[tuple[bytes, int]]) -> bytes:
    """A signed transaction spending ``spends`` (in order) to ``outputs`` ``(locking script, satoshis)``: the
    P2PKH-only case of :func:`sign_transaction`.

    No amounts are checked (the caller balances them; a test may want an unbalanced transaction).

    Raises:
        ValueError: a secret is not a valid private key.
    """
    return sign_transaction(spends, outputs)


#: how an input is unlocked: ``p2pkh`` pushes the signature and the public key, ``pushdrop`` the signature alone
#: (a PushDrop token's locking script holds its key and ends in OP_CHECKSIG before the dropped fields)
UnlockForm = Literal["p2pkh", "pushdrop"]


@dataclass(frozen=True, slots=True)
class Spend:
    """An input to sign with :func:`sign_transaction`: the output it spends (``outpoint``, its ``locking_script``,
    which is signed as the BIP143 script code, and its ``satoshis``), the 32-byte private key that unlocks it and
    how (``unlock``). ``public_key``: the secret's compressed public key when the caller has it (p2pkh only)."""

    outpoint: bytes
    locking_script: bytes
    satoshis: int
    secret: bytes
    unlock: UnlockForm = "p2pkh"
    public_key: bytes | None = None


def sign_transaction(inputs: Sequence[Spend | P2pkhSpend], outputs: Sequence[tuple[bytes, int]]) -> bytes:
    """A signed transaction spending ``inputs`` (in order) to ``outputs`` ``(locking script, satoshis)``: version
    1, every sequence 0xffffffff, locktime 0, SIGHASH_ALL|FORKID. A :class:`P2pkhSpend` is a ``p2pkh`` input; a
    transaction of p2pkh inputs only is byte-identical to :func:`sign_p2pkh`'s.

    No amounts are checked (the caller balances them).

    Returns:
        The serialized transaction.

    Raises:
        ValueError: a secret is not a valid private key, or an unknown unlock form.
    """
    outputs_body = serialize_outputs(outputs)
    hash_prevouts = sha256d(b"".join(s.outpoint for s in inputs))
    hash_sequence = sha256d(_SEQUENCE * len(inputs))
    hash_outputs = sha256d(outputs_body)
    parts = [_VERSION, varint_bytes(len(inputs))]
    for spend in inputs:
        form = spend.unlock if isinstance(spend, Spend) else "p2pkh"
        if form not in ("p2pkh", "pushdrop"):
            raise ValueError(f"unknown unlock form {form!r}: p2pkh or pushdrop")
        digest = bip143_digest(
            _VERSION,
            hash_prevouts,
            hash_sequence,
            spend.outpoint,
            spend.locking_script,
            spend.satoshis,
            _SEQUENCE,
            hash_outputs,
            _LOCKTIME,
            SIGHASH_ALL_FORKID,
        )
        signature = sign_digest(spend.secret, digest) + _SIGHASH_BYTE
        unlocking = bytes([len(signature)]) + signature  # a direct push: at most 73 bytes
        if form == "p2pkh":
            public = spend.public_key or PublicKey.from_valid_secret(spend.secret).format(compressed=True)
            unlocking += _KEY_PUSH + public
        parts += (spend.outpoint, varint_bytes(len(unlocking)), unlocking, _SEQUENCE)
    parts += (varint_bytes(len(outputs)), outputs_body, _LOCKTIME)
    return b"".join(parts)
