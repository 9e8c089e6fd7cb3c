"""BRC-74 paths: our encoder writes the bytes bsv-sdk writes, and our root is the one bsv-sdk (and the tree)
computes, for every leaf of trees of many shapes; compound paths and bad bytes too."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import cast

import pytest
from bsv.merkle_path import MerklePath
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay_node.chain.blocks import merkle_levels, merkle_root
from overlay_node.crypto.bump import encode_path, path_root, varint_bytes

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / ".tools" / "node_modules" / "@bsv" / "sdk"


def merkle_path_for(levels: list[list[bytes]], index: int, height: int) -> MerklePath:
    """The reference: the same single-leaf path built with bsv-sdk's MerklePath."""
    path: list[list[dict[str, object]]] = []
    for h in range(len(levels) - 1):
        node, sibling = index >> h, (index >> h) ^ 1
        leaves: list[dict[str, object]] = []
        if h == 0:
            leaves.append({"offset": node, "hash_str": levels[0][node][::-1].hex(), "txid": True})
        if sibling < len(levels[h]):
            leaves.append({"offset": sibling, "hash_str": levels[h][sibling][::-1].hex()})
        else:
            leaves.append({"offset": sibling, "duplicate": True})
        path.append(sorted(leaves, key=lambda leaf: cast(int, leaf["offset"])))
    return MerklePath(height, path)


def txids(n: int, salt: int = 0) -> list[str]:
    return [hashlib.sha256(f"{salt}:{i}".encode()).hexdigest() for i in range(n)]


@pytest.mark.parametrize("size", [2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 100, 257])
def test_every_leaf_encodes_like_bsv_sdk_and_proves_the_block_root(size: int) -> None:
    ids = txids(size, size)
    levels = merkle_levels(ids)
    root = merkle_root(ids)
    for i, txid in enumerate(ids):
        ours = encode_path(levels, i, 1000 + size)
        assert ours == bytes(merkle_path_for(levels, i, 1000 + size).to_binary())
        assert path_root(ours, txid) == root
        assert MerklePath.from_binary(ours).compute_root(txid) == root


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=2, max_value=70), st.data())
def test_compound_paths_of_several_leaves(size: int, data: st.DataObject) -> None:
    # the union of single paths, with the nodes one of them can compute left out (as a trimmed BUMP has it);
    # bsv-sdk's own combine() trims too much for some shapes, so the union is built here
    ids = txids(size, 7)
    levels = merkle_levels(ids)
    picked = data.draw(st.lists(st.integers(0, size - 1), min_size=2, max_size=6, unique=True))
    merged: list[dict[int, dict[str, object]]] = [{} for _ in range(len(levels) - 1)]
    for i in picked:
        for h, leaves in enumerate(merkle_path_for(levels, i, 5).path):
            for leaf in leaves:
                merged[h].setdefault(cast(int, leaf["offset"]), leaf)
    for h in range(1, len(merged)):  # drop what the level below computes
        for offset in list(merged[h]):
            if 2 * offset in merged[h - 1] and 2 * offset + 1 in merged[h - 1]:
                del merged[h][offset]
    path = [sorted(m.values(), key=lambda leaf: cast(int, leaf["offset"])) for m in merged]
    raw = bytes(MerklePath(5, path).to_binary())
    for i in picked:
        assert path_root(raw, ids[i]) == merkle_root(ids)


def test_bad_paths_are_refused_with_a_reason() -> None:
    ids = txids(9)
    good = encode_path(merkle_levels(ids), 4, 10)
    with pytest.raises(ValueError, match="does not hold transaction"):
        path_root(good, txids(1, 99)[0])
    with pytest.raises(ValueError, match="ends too early"):
        path_root(good[:-5], ids[4])
    with pytest.raises(ValueError, match="bytes after"):
        path_root(good + b"\x00", ids[4])
    with pytest.raises(ValueError, match="tree height"):
        path_root(b"\x0a\x00", ids[4])
    flagged = bytearray(good)
    flagged[flagged.index(bytes.fromhex(ids[4])[::-1]) - 1] = 7  # the txid leaf's flags byte
    with pytest.raises(ValueError, match="unknown leaf flags"):
        path_root(bytes(flagged), ids[4])
    with pytest.raises(ValueError, match="one transaction"):
        encode_path(merkle_levels(ids[:1]), 0, 10)
    # a path that proves another tree (a hash altered) gives another root: the caller compares roots
    altered = bytearray(good)
    altered[-1] ^= 1
    assert path_root(bytes(altered), ids[4]) != merkle_root(ids)


def coinbase_path(txid: str, height: int, offset: int = 0) -> bytes:
    """A path of one level holding ``txid`` alone (flag 2), as MerklePath.fromCoinbaseTxidAndHeight writes it."""
    return varint_bytes(height) + b"\x01\x01" + varint_bytes(offset) + b"\x02" + bytes.fromhex(txid)[::-1]


#: for each [txid, height]: @bsv/sdk's fromCoinbaseTxidAndHeight bytes, and its computeRoot of them
_SDK_COINBASE = """
const { MerklePath } = require(process.argv[1]);
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
console.log(JSON.stringify(cases.map(([txid, height]) => {
  const path = MerklePath.fromCoinbaseTxidAndHeight(txid, height);
  return [path.toHex(), MerklePath.fromHex(path.toHex()).computeRoot(txid)];
})));
"""


def test_a_block_of_one_transaction_proves_the_txid_as_its_root_like_at_bsv_sdk() -> None:
    # (bsv-sdk for Python has no such case: its compute_root refuses these paths, "Missing hash for index 0")
    # the Makefile's `tools` target installs @bsv/sdk (make test depends on it): a missing copy is a failure
    node = shutil.which("node")
    if node is None or not SDK.is_dir():
        pytest.fail("@bsv/sdk or node missing: run `make tools` (npm install --prefix .tools @bsv/sdk)")
    cases = [(txid, height) for txid, height in zip(txids(4, 3), (0, 1, 800_000, 2**32 + 5), strict=True)]
    proc = subprocess.run(
        [node, "-e", _SDK_COINBASE, str(SDK)],
        input=json.dumps(cases).encode(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    for (txid, height), (sdk_hex, sdk_root) in zip(cases, json.loads(proc.stdout), strict=True):
        ours = coinbase_path(txid, height)
        assert ours.hex() == sdk_hex
        assert path_root(ours, txid) == sdk_root == txid
        # it proves that transaction only
        with pytest.raises(ValueError, match="does not hold transaction"):
            path_root(ours, txids(1, 98)[0])
    # a lone leaf elsewhere than offset 0 is no block's shape: refused (@bsv/sdk would answer the txid)
    txid = txids(1, 97)[0]
    for offset in (1, 2, 5):
        with pytest.raises(ValueError, match="missing"):
            path_root(coinbase_path(txid, 10, offset), txid)
    # one level holding the transaction and its sibling is a block of two: the root is their hash, not the txid
    a, b = txids(2, 96)
    two = varint_bytes(10) + b"\x01\x02" + b"\x00\x02" + bytes.fromhex(a)[::-1] + b"\x01\x00" + bytes.fromhex(b)[::-1]
    assert path_root(two, a) == merkle_root([a, b]) != a
