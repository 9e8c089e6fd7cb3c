"""The PushDrop codec and token signing (``crypto/pushdrop``) against @bsv/sdk's PushDrop, and the generic signer
(``crypto/sighash.sign_transaction``) spending a P2PKH coin and a PushDrop token under bsv-sdk's interpreter."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.chain.formats import SourceOutput, parse_transaction
from overlay_node.chain.refusals import Refusal
from overlay_node.chain.validation import Policy, check_transaction
from overlay_node.crypto import pushdrop
from overlay_node.crypto.keys import SECP256K1_N, Identity
from overlay_node.crypto.scripts import minimal_push, p2pkh_for_key
from overlay_node.crypto.sighash import P2pkhSpend, Spend, outpoint_bytes, sign_p2pkh, sign_transaction

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / ".tools" / "node_modules" / "@bsv" / "sdk"
PROTOCOL = (2, "service host interconnect")
FREE = Policy(mining_fee_satoshis=0)


def sdk_view(jobs: dict[str, Any]) -> dict[str, Any]:
    """Run tests/unit/js/overlay_tokens.cjs (the official TypeScript SDK) on ``jobs``."""
    node = shutil.which("node")
    if node is None or not SDK.is_dir():
        pytest.fail("@bsv/sdk or node missing: run `make tools` (npm install --prefix .tools @bsv/sdk)")
    proc = subprocess.run(
        [node, str(ROOT / "tests/unit/js/overlay_tokens.cjs"), str(SDK)],
        input=json.dumps(jobs).encode(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def ts_field(field: bytes) -> bytes:
    """What @bsv/sdk's decoder gives back for a field written with a minimal push: ``OP_0`` reads as ``00`` and
    ``OP_16`` as an empty field."""
    return {b"": b"\x00", b"\x10": b""}.get(field, field)


def key_of(secret: int) -> bytes:
    return PrivateKey(secret.to_bytes(32, "big")).public_key.format(compressed=True)


_secrets = st.integers(1, SECP256K1_N - 1)
_fields = st.lists(
    st.one_of(
        st.binary(max_size=2),
        st.binary(min_size=70, max_size=80),
        st.binary(min_size=250, max_size=260),
        st.binary(min_size=65530, max_size=65540),
    ),
    max_size=7,
)


@settings(max_examples=60, deadline=None)
@given(_secrets, _fields)
def test_round_trip(secret: int, fields: list[bytes]) -> None:
    key = key_of(secret)
    script = pushdrop.encode(key, fields)
    drops = len(fields) // 2 + len(fields) % 2
    assert script.startswith(b"\x21" + key + b"\xac")
    assert script.endswith(b"\x6d" * (len(fields) // 2) + b"\x75" * (len(fields) % 2))
    assert len(script) == 35 + sum(len(minimal_push(f)) for f in fields) + drops
    decoded = pushdrop.decode(script)
    assert decoded.locking_key == key
    assert decoded.fields == tuple(ts_field(f) for f in fields)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_a_value_or_a_value_error(data: bytes) -> None:
    for script in (data, b"\x21" + key_of(7) + data):
        try:
            decoded = pushdrop.decode(script)
        except ValueError:
            continue
        assert len(decoded.locking_key) == 33
        assert sum(len(f) for f in decoded.fields) <= len(script)


def test_what_the_typescript_decoder_accepts() -> None:
    key = key_of(5)
    x = key[1:]
    uncompressed = PrivateKey((5).to_bytes(32, "big")).public_key.format(compressed=False)
    hybrid = bytes([6 + uncompressed[-1] % 2]) + uncompressed[1:]
    # a locking key written uncompressed or hybrid comes back compressed
    assert pushdrop.decode(b"\x41" + uncompressed + b"\xac\x01\x07\x75").locking_key == key
    assert pushdrop.decode(b"\x41" + hybrid + b"\xac").locking_key == key
    with pytest.raises(ValueError, match="the locking key is not a public key"):  # hybrid with the wrong parity
        pushdrop.decode(b"\x41" + bytes([hybrid[0] ^ 1]) + hybrid[1:] + b"\xac")
    # fields run to the end of the script without a DROP; a truncated push yields what is there
    assert pushdrop.decode(b"\x21" + key + b"\xac\x02ab\x05xy").fields == (b"ab", b"xy")
    # chunk 1 is not checked; OP_RETURN swallows the rest; OP_16 reads as empty, OP_RESERVED as 00
    assert pushdrop.decode(b"\x21" + key + b"\x00\x6a\x01\x02").fields == (b"\x01\x02",)
    assert pushdrop.decode(b"\x21" + key + b"\xac\x60\x50\x4f\x00\x6d\x6d").fields == (b"", b"\x00", b"\x81", b"\x00")
    # an OP_RETURN inside OP_IF is an ordinary opcode (an empty field)
    assert pushdrop.decode(b"\x21" + key + b"\xac\x63\x6a\x68\x75").fields == (b"", b"", b"")
    # OP_RETURN first: its data is the key
    assert pushdrop.decode(b"\x6a" + key).fields == ()
    for bad, refusal in [
        (b"", "empty"),
        (b"\x00", "the first chunk pushes no locking key"),
        (b"\xac", "the first chunk pushes no locking key"),
        (b"\x20" + x, "the locking key is not a public key"),
        (b"\x21\x04" + x, "the locking key is not a public key"),
        (b"\x21" + key[:-1], "the locking key is not a public key"),
    ]:
        with pytest.raises(ValueError, match=f"^not a PushDrop script: {refusal}$"):
            pushdrop.decode(bad)


def _random_script(rnd: random.Random) -> bytes:
    """A script shaped like a PushDrop, with the odd twist the decoder must read as @bsv/sdk does."""
    parts: list[bytes] = []
    first = rnd.random()
    if first < 0.7:
        parts.append(b"\x21" + key_of(rnd.randrange(1, 1000)))
    elif first < 0.8:
        parts.append(b"\x41" + PrivateKey(rnd.randbytes(32)).public_key.format(compressed=False))
    else:
        parts.append(rnd.randbytes(rnd.randrange(0, 40)))
    parts.append(rnd.choice([b"\xac", b"\xad", b"", b"\x00"]))
    for _ in range(rnd.randrange(0, 8)):
        kind = rnd.random()
        if kind < 0.5:
            parts.append(minimal_push(rnd.randbytes(rnd.choice([0, 1, 1, 2, 33, 80, 300]))))
        elif kind < 0.65:
            parts.append(bytes([rnd.choice([0x00, 0x4F, 0x50, 0x51, 0x5F, 0x60, 0x61, 0x63, 0x68, 0x6A, 0xAC])]))
        elif kind < 0.8:
            parts.append(rnd.choice([b"\x75", b"\x6d", b"\x6d\x75"]))
        elif kind < 0.9:
            parts.append(rnd.choice([b"\x4c\x00", b"\x4d\x01\x00\x07", b"\x4e\x00\x00\x00\x00"]))
        else:
            parts.append(rnd.randbytes(rnd.randrange(1, 6)))
    script = b"".join(parts)
    if rnd.random() < 0.2:
        script = script[: rnd.randrange(0, len(script) + 1)]
    return script


def test_decoder_matches_typescript_sdk() -> None:
    rnd = random.Random(20240601)
    scripts = [_random_script(rnd) for _ in range(1500)]
    scripts += [pushdrop.encode(key_of(9), [bytes([b]) for b in range(0, 256, 3)]), b"\x4e\xff\xff\xff\xff"]
    view = sdk_view({"decode": [s.hex() for s in scripts]})["decode"]
    accepted = 0
    for script, theirs in zip(scripts, view, strict=True):
        try:
            ours = pushdrop.decode(script)
        except ValueError:
            assert "error" in theirs, script.hex()
            continue
        accepted += 1
        assert theirs == {"key": ours.locking_key.hex(), "fields": [f.hex() for f in ours.fields]}, script.hex()
    assert accepted > 900


# -- token signing and the linkage check ---------------------------------------------------------------------------


def test_token_is_locked_and_signed_as_the_reference_expects() -> None:
    identity = Identity.generate()
    fields = [b"SHIP", identity.public_key, b"https://node.example.com", b"tm_weather"]
    script = pushdrop.lock(identity, fields, PROTOCOL)
    decoded = pushdrop.decode(script)
    assert decoded.fields[:4] == tuple(fields)
    assert decoded.locking_key == pushdrop.token_locking_key(identity, PROTOCOL)
    assert key_of(int.from_bytes(pushdrop.token_secret(identity, PROTOCOL), "big")) == decoded.locking_key
    signature = decoded.fields[4]
    assert pushdrop.is_linked(identity.public_key, decoded.locking_key, fields, signature, PROTOCOL)
    other = Identity.generate()
    assert not pushdrop.is_linked(other.public_key, decoded.locking_key, fields, signature, PROTOCOL)
    assert not pushdrop.is_linked(identity.public_key, other.public_key, fields, signature, PROTOCOL)
    assert not pushdrop.is_linked(identity.public_key, decoded.locking_key, fields[:3], signature, PROTOCOL)
    assert not pushdrop.is_linked(identity.public_key, decoded.locking_key, fields, signature, (2, "other things"))
    assert not pushdrop.is_linked(identity.public_key, decoded.locking_key, fields, signature[:-1], PROTOCOL)
    assert not pushdrop.is_linked(b"\x02" + bytes(32), decoded.locking_key, fields, signature, PROTOCOL)
    assert not pushdrop.is_linked(identity.public_key, b"", fields, signature, PROTOCOL)
    assert not pushdrop.is_linked(identity.public_key, decoded.locking_key, fields, signature, (9, "bad"))


def _der(r: int, s: int, *, pad: bool = True) -> bytes:
    def integer(v: int) -> bytes:
        raw = v.to_bytes(32, "big").lstrip(b"\0") or b"\0"
        if pad and raw[0] & 0x80:
            raw = b"\0" + raw
        return b"\x02" + bytes([len(raw)]) + raw

    body = integer(r) + integer(s)
    return b"\x30" + bytes([len(body)]) + body


def _rs(der: bytes) -> tuple[int, int]:
    r_len = der[3]
    return int.from_bytes(der[4 : 4 + r_len], "big"), int.from_bytes(der[6 + r_len :], "big")


def test_signature_forms_are_judged_as_typescript_sdk_judges_them() -> None:
    identity = Identity.from_private_bytes(hashlib.sha256(b"linkage").digest())
    for n in range(64):  # a signature whose r has its high bit set, to write it unpadded
        fields = [b"SHIP", identity.public_key, f"https://node{n}.example.com".encode(), b"tm_weather"]
        good = pushdrop.token_signature(identity, fields, PROTOCOL)
        r, s = _rs(good)
        if r >> 255:
            break
    variants = {
        "canonical": good,
        "high S": _der(r, SECP256K1_N - s),
        "unpadded high bit": _der(r, s, pad=False),
        "extra zero": good[:1] + bytes([good[1] + 1]) + good[2:3] + bytes([good[3] + 1]) + b"\0" + good[4:],
        "s = n": _der(r, SECP256K1_N),
        "zero r": _der(0, s),
        "long length form": b"\x30\x81" + good[1:2] + good[2:],
        "truncated": good[:-3],
        "trailing byte": good + b"\0",
        "empty": b"",
    }
    key = pushdrop.token_locking_key(identity, PROTOCOL)
    scripts = {name: pushdrop.encode(key, [*fields, sig]) for name, sig in variants.items()}
    jobs = [{"script": s.hex(), "protocol": list(PROTOCOL), "identityField": 1} for s in scripts.values()]
    theirs = dict(zip(scripts, sdk_view({"linked": jobs})["linked"], strict=True))
    ours = {name: pushdrop.is_linked(identity.public_key, key, fields, sig, PROTOCOL) for name, sig in variants.items()}
    assert ours == theirs
    assert ours["canonical"]
    assert ours["high S"]
    assert ours["unpadded high bit"]
    assert not ours["truncated"]


# -- the generic signer ------------------------------------------------------------------------------------------


def test_spending_a_p2pkh_coin_and_a_pushdrop_token_validates() -> None:
    payer = (0x1234).to_bytes(32, "big")
    identity = Identity.generate()
    token_script = pushdrop.lock(identity, [b"SLAP", identity.public_key, b"https://a.example", b"ls_x"], PROTOCOL)
    coin_script = p2pkh_for_key(key_of(0x1234))
    coin = ("11" * 32, 0)
    token = ("22" * 32, 3)
    inputs = [
        Spend(outpoint_bytes(*coin), coin_script, 5_000, payer),
        Spend(outpoint_bytes(*token), token_script, 1, pushdrop.token_secret(identity, PROTOCOL), "pushdrop"),
    ]
    outputs = [(p2pkh_for_key(key_of(99)), 4_900)]
    raw = sign_transaction(inputs, outputs)
    ptx = parse_transaction(raw)
    assert len(ptx.inputs[1].script) == 1 + ptx.inputs[1].script[0]  # the signature alone
    sources = {coin: SourceOutput(satoshis=5_000, locking_script=coin_script)}
    sources[token] = SourceOutput(satoshis=1, locking_script=token_script)
    assert check_transaction(ptx, sources, FREE).fee == 101

    # the token's key is what unlocks it: another key fails under the interpreter
    wrong = [inputs[0], Spend(outpoint_bytes(*token), token_script, 1, payer, "pushdrop")]
    with pytest.raises(Refusal, match="input 1"):
        check_transaction(parse_transaction(sign_transaction(wrong, outputs)), sources, FREE)
    # and so does a signature over another amount
    short = [inputs[0], Spend(outpoint_bytes(*token), token_script, 2, inputs[1].secret, "pushdrop")]
    with pytest.raises(Refusal, match="input 1"):
        check_transaction(parse_transaction(sign_transaction(short, outputs)), sources, FREE)


def test_p2pkh_only_is_byte_identical_to_sign_p2pkh() -> None:
    secrets = [(7).to_bytes(32, "big"), (8).to_bytes(32, "big")]
    spends = [
        P2pkhSpend(outpoint_bytes("33" * 32, i), p2pkh_for_key(key_of(7 + i)), 1000 + i, secret)
        for i, secret in enumerate(secrets)
    ]
    outputs = [(b"\x6a\x01\x01", 0), (p2pkh_for_key(key_of(3)), 1500)]
    expected = sign_p2pkh(spends, outputs)
    assert sign_transaction(spends, outputs) == expected
    as_spends = [Spend(s.outpoint, s.locking_script, s.satoshis, s.secret) for s in spends]
    assert sign_transaction(as_spends, outputs) == expected
    with pytest.raises(ValueError, match="unlock form"):
        sign_transaction([Spend(spends[0].outpoint, b"", 1, secrets[0], "p2sh")], outputs)  # type: ignore[arg-type]
