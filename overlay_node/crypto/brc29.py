"""BRC-29 payment keys: the derivation prefix and suffix, the invoice number they make, and the P2PKH script output 0
of a payment locks to. Pure functions over bytes and an identity.

A payment's output 0 pays P2PKH of the payee's BRC-42 child key for protocol ``(2, "3241645161d8")`` and key id
``"<derivationPrefix> <derivationSuffix>"``: the payer derives it as the counterparty's child public key
(:func:`payer_locking_script`), the payee as its own (:func:`payee_locking_script`), and both arrive at the same key
(``crypto/brc42.py``). The prefix is the payee's nonce (in its quote), the suffix the payer's.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Final

from overlay_node.crypto.brc42 import ProtocolID, derive_child_public_key, invoice_number, own_child_public
from overlay_node.crypto.keys import Identity
from overlay_node.crypto.scripts import p2pkh_for_key
from overlay_node.errors import BadRequest

__all__ = [
    "BRC29_PROTOCOL",
    "brc29_invoice",
    "check_nonce",
    "new_nonce",
    "payee_locking_script",
    "payer_locking_script",
]

#: BRC-29's protocol id: the payment key is derived with it
BRC29_PROTOCOL: Final[ProtocolID] = (2, "3241645161d8")

_NONCE = re.compile(r"^[A-Za-z0-9+/=_-]{4,64}$")
#: ``"2-3241645161d8-"``: the invoice number of every payment key up to its key id (BRC-43, built once)
_INVOICE_HEAD: Final = invoice_number(BRC29_PROTOCOL, "x")[:-1]


def new_nonce() -> str:
    """A fresh derivation prefix or suffix: base64 of 16 random bytes."""
    return base64.b64encode(secrets.token_bytes(16)).decode("ascii")


def check_nonce(value: object, what: str) -> str:
    """A derivation prefix or suffix (``what`` names it in the error): 4-64 base64 characters.

    Raises:
        BadRequest: otherwise.
    """
    if not isinstance(value, str) or not _NONCE.fullmatch(value):
        raise BadRequest(f"{what} must be 4-64 base64 characters")
    return value


def brc29_invoice(prefix: str, suffix: str) -> str:
    """The BRC-43 invoice number of a BRC-29 payment key: ``"2-3241645161d8-<prefix> <suffix>"``.

    Raises:
        BadRequest: a prefix or suffix that is not a nonce (4-64 base64 characters).
    """
    check_nonce(prefix, "derivation prefix")
    check_nonce(suffix, "derivation suffix")
    # the key id is at most 129 bytes of base64 and a space: always a valid key id for the constant protocol
    return f"{_INVOICE_HEAD}{prefix} {suffix}"


def payer_locking_script(payer: Identity, payee: str | bytes, prefix: str, suffix: str) -> bytes:
    """The script output 0 of a payment locks to, computed by the payer (the payee's child public key)."""
    return p2pkh_for_key(derive_child_public_key(payer, payee, brc29_invoice(prefix, suffix)))


def payee_locking_script(payee: Identity, payer: str | bytes, prefix: str, suffix: str) -> bytes:
    """The same script, computed by the payee from its own side of the derivation (output 0 must match it)."""
    return p2pkh_for_key(own_child_public(payee, payer, brc29_invoice(prefix, suffix)))
