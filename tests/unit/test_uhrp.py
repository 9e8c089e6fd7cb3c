"""The UHRP URL codec (BRC-26) against fixed vectors, bsv-sdk's StorageUtils and @bsv/sdk's StorageUtils."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from bsv.storage.utils import StorageUtils
from hypothesis import given
from hypothesis import strategies as st

from overlay_node.crypto.uhrp import b58decode, b58encode, hash_from_url, parse_uhrp, url_for_content, url_for_hash
from overlay_node.errors import BadRequest

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / ".tools" / "node_modules" / "@bsv" / "sdk"

#: fixed vectors (checked against @bsv/sdk StorageUtils.getURLForFile, which returns the bare form)
VECTORS = {
    b"": "XUUd4J26mdRjnb7iYUdYWN3XR59w8zBWaGVdWnPU8MWvECe3tqCq",
    b"hello world": "XUUJPXCDnKd2iwUGSFTfTFyhQyxXjvg1ArF7byo58k7cyP5PYT6z",
}


def test_fixed_vectors_and_every_accepted_form() -> None:
    for data, url in VECTORS.items():
        digest = hashlib.sha256(data).digest()
        assert url_for_content(data) == url == url_for_hash(digest)
        for form in (url, f"uhrp:{url}", f"uhrp://{url}", f"UHRP://{url}", f"web+uhrp://{url}", digest.hex()):
            assert parse_uhrp(form) == digest


@given(st.binary(max_size=2048))
def test_matches_bsv_sdk_python(data: bytes) -> None:
    ours = url_for_content(data)
    assert "uhrp://" + ours == StorageUtils.get_url_for_file(data)
    assert StorageUtils.get_hash_from_url("uhrp://" + ours) == hashlib.sha256(data).digest()
    assert hash_from_url(ours) == hashlib.sha256(data).digest()


def test_matches_bsv_sdk_typescript() -> None:
    # the Makefile's `tools` target installs @bsv/sdk (make test depends on it): a missing copy is a failure
    node = shutil.which("node")
    if node is None or not SDK.is_dir():
        pytest.fail("@bsv/sdk or node missing: run `make tools` (npm install --prefix .tools @bsv/sdk)")
    inputs = [b"", b"hello world", *(os.urandom(n) for n in (1, 31, 32, 33, 1000, 65536))]
    proc = subprocess.run(
        [node, str(ROOT / "tests/unit/js/uhrp_urls.cjs"), str(SDK)],
        input=json.dumps([d.hex() for d in inputs]).encode(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert json.loads(proc.stdout) == [url_for_content(d) for d in inputs]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("uhrp://", "empty"),
        ("XUUd4J26mdRjnb7iYUdYWN3XR59w8zBWaGVdWnPU8MWvECe3tqCr", "checksum"),
        ("XUUd4J26mdRjnb7iYUdYWN3XR59w8zBWaGVdWnPU8MWvECe3tq", "decodes to"),
        ("XUUd4J26mdRjnb7iYUdYWN3XR59w8zBWaGVdWnPU8MWvECe3tqC0", "not base58"),
        ("x" * 200, "too long"),
    ],
)
def test_bad_urls_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_uhrp(text)


def test_wrong_prefix_with_a_good_checksum_is_refused() -> None:
    payload = b"\x00\x00" + bytes(32)
    check = hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    with pytest.raises(BadRequest, match="prefix"):
        hash_from_url(b58encode(payload + check))
    with pytest.raises(BadRequest, match="32 bytes"):
        url_for_hash(b"short")


@given(st.binary(max_size=64))
def test_base58_round_trip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


@given(st.text(max_size=80))
def test_garbage_never_crashes(text: str) -> None:
    try:
        assert len(parse_uhrp(text)) == 32
    except BadRequest:
        pass
