"""ARC answers -> our settlement outcome (``services.arc.interpret``), checked on ARC's documented answers.

The bodies below are the examples of ARC's OpenAPI spec (bitcoin-sv/arc ``pkg/api/arc.yaml``) and the statuses
of its ``TransactionDetails.txStatus`` enum.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay_node.services.arc import (
    FAILED_STATUSES,
    PROGRESSING_STATUSES,
    ArcOutcome,
    interpret,
    transport_failure,
)

MINED_TXID = "b68b064b336b9a4abdb173f3e32f27b38a222cb2102f51b8c92563e816b12b4a"
MINED_PATH = (
    "fe54251800020400028d97f9ebeddd9f9aa8e0e953b3a76f316298ab05e9834aa811716e9d397564e501025f64aa8e012e26a5c5803c9"
    "f94d1c2c8ea68ecef1415011e1c2e26b9c966b6ad02021f5fa39607ca3b48d53c902bd5bb4bbf6a7ac99cf9fda45cc21b71e6e2f7889"
    "603024a2bb116e86325c9b8512f10b22c228ab3272fe3f373b1bd4a9a6b334b068bb602000061793b278303101a1390ceae5a713de0ea"
    "bd9cda63702fe84c928970acf7c45e0100a567e3d066e38638b27897559302eabc85eb69b202c2e86d4338bab73008f460"
)

# ARC spec example "mined"
MINED: dict[str, Any] = {
    "blockHash": "0000000000000aac89fbed163ed60061ba33bc0ab9de8e7fd8b34ad94c2414cd",
    "blockHeight": 736228,
    "extraInfo": "",
    "merklePath": MINED_PATH,
    "status": 200,
    "timestamp": "2023-03-09T12:03:48.382910514Z",
    "title": "OK",
    "txStatus": "MINED",
    "txid": MINED_TXID,
}
# ARC spec example "mempool"
MEMPOOL: dict[str, Any] = {
    "blockHash": "",
    "blockHeight": 0,
    "extraInfo": "",
    "status": 200,
    "timestamp": "2023-03-09T12:03:48.382910514Z",
    "title": "OK",
    "txStatus": "SEEN_ON_NETWORK",
    "txid": "c0d6fce714e4225614f000c6a5addaaa1341acbb9c87115114dcf84f37b945a6",
    "merklePath": "",
}
# ARC spec example "error" (Invalid outputs)
INVALID_OUTPUTS: dict[str, Any] = {
    "detail": "Transaction is invalid because the outputs are non-existent or invalid",
    "extraInfo": "arc error 463: arc error 463: transaction output 0 satoshis is invalid",
    "instance": None,
    "status": 463,
    "title": "Invalid outputs",
    "txid": "a0d69a2dfad710770ed282cce316c5792f6101a68046a263a17a1ae02676015e",
    "type": "https://bitcoin-sv.github.io/arc/#/errors?id=_463",
}


def _with(status: str, **extra: Any) -> dict[str, Any]:
    return {**MEMPOOL, "txStatus": status, **extra}


def test_mined_brings_the_merkle_path() -> None:
    result = interpret(200, MINED)
    assert result.outcome is ArcOutcome.MINED
    assert result.mined
    assert result.accepted
    assert result.merkle_path == MINED_PATH
    assert result.block_height == 736228
    assert result.block_hash == MINED["blockHash"]
    assert result.txid == MINED_TXID


@pytest.mark.parametrize(
    "path",
    ["", None, "zz", MINED_PATH[:40]],
)
def test_mined_without_a_usable_path_is_not_mined(path: str | None) -> None:
    result = interpret(200, {**MINED, "merklePath": path})
    assert result.outcome is ArcOutcome.SEEN
    assert result.merkle_path is None


def test_mined_path_must_prove_this_txid() -> None:
    other = "11" * 32
    result = interpret(200, {**MINED, "txid": other})
    assert result.outcome is ArcOutcome.SEEN
    assert "merkle path" in result.detail


def test_seen_on_network() -> None:
    result = interpret(200, MEMPOOL)
    assert result.outcome is ArcOutcome.SEEN
    assert result.accepted
    assert not result.mined
    assert not result.failed


@pytest.mark.parametrize("status", sorted(PROGRESSING_STATUSES))
def test_progressing_statuses(status: str) -> None:
    result = interpret(200, _with(status))
    assert result.outcome is ArcOutcome.PROGRESSING
    assert not result.failed
    assert not result.retryable


def test_orphan_mempool_progresses() -> None:
    result = interpret(200, _with("SEEN_IN_ORPHAN_MEMPOOL", extraInfo="missing inputs"))
    assert result.outcome is ArcOutcome.PROGRESSING
    assert result.accepted
    assert not result.failed


def test_double_spend_with_http_200_fails() -> None:
    rival = "c0d6fce714e4225614f000c6a5addaaa1341acbb9c87115114dcf84f37b945a6"
    result = interpret(200, _with("DOUBLE_SPEND_ATTEMPTED", competingTxs=[rival], txid="ab" * 32))
    assert result.outcome is ArcOutcome.FAILED
    assert result.failed
    assert not result.accepted
    assert result.competing_txs == (rival,)
    assert result.http_status == 200
    assert result.tx_status == "DOUBLE_SPEND_ATTEMPTED"
    assert result.txid == "ab" * 32


@pytest.mark.parametrize("status", sorted(FAILED_STATUSES))
def test_failed_statuses(status: str) -> None:
    assert interpret(200, _with(status, extraInfo="why")).outcome is ArcOutcome.FAILED


def test_rejected_keeps_extra_info() -> None:
    result = interpret(200, _with("REJECTED", extraInfo="previously double spend attempted"))
    assert result.failed
    assert "previously double spend attempted" in result.detail


@pytest.mark.parametrize("code", [400, 422, 460, 461, 462, 463, 464, 465, 466, 467, 468, 469, 473])
def test_arc_refusal_codes_fail(code: int) -> None:
    body = {**INVALID_OUTPUTS, "status": code}
    result = interpret(code, body)
    assert result.outcome is ArcOutcome.FAILED
    assert result.arc_code == code
    assert not result.retryable
    assert result.txid == INVALID_OUTPUTS["txid"]
    assert "satoshis is invalid" in result.extra_info


def test_documented_invalid_outputs_answer() -> None:
    result = interpret(463, INVALID_OUTPUTS)
    assert result.failed
    assert result.arc_code == 463
    assert "Invalid outputs" in result.detail


def test_refusal_inside_a_batch_answer() -> None:
    # /v1/txs answers HTTP 200 with one object per transaction; a refusal is an error object among them
    result = interpret(200, INVALID_OUTPUTS)
    assert result.outcome is ArcOutcome.FAILED
    assert result.arc_code == 463


@pytest.mark.parametrize("code", [408, 409, 425, 429, 500, 502, 503, 504])
def test_transient_http_is_retryable(code: int) -> None:
    result = interpret(code, None, txid="cd" * 32)
    assert result.outcome is ArcOutcome.RETRY
    assert result.retryable
    assert result.txid == "cd" * 32


def test_credentials_and_not_found() -> None:
    assert interpret(401, {"status": 401}).outcome is ArcOutcome.FAILED
    assert interpret(403, None).outcome is ArcOutcome.FAILED
    assert interpret(404, {"status": 404, "title": "Not found"}, query=True).outcome is ArcOutcome.NOT_FOUND
    assert interpret(404, None).outcome is ArcOutcome.FAILED  # a submission to a wrong URL


def test_odd_answers() -> None:
    assert interpret(200, {"txid": "ab" * 32}).outcome is ArcOutcome.RETRY  # no txStatus: nothing learnt
    assert interpret(200, None).outcome is ArcOutcome.RETRY
    unknown = interpret(200, _with("SOMETHING_NEW"))
    assert unknown.outcome is ArcOutcome.PROGRESSING
    assert "SOMETHING_NEW" in unknown.detail
    assert interpret(200, _with("seen_on_network")).outcome is ArcOutcome.SEEN
    assert interpret(302, None).outcome is ArcOutcome.RETRY


def test_transport_failure_is_retryable() -> None:
    result = transport_failure(ConnectionRefusedError("refused"), txid="ef" * 32)
    assert result.outcome is ArcOutcome.RETRY
    assert result.http_status is None
    assert "refused" in result.detail


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
_keys = st.sampled_from(["txid", "txStatus", "merklePath", "competingTxs", "status", "blockHeight", "extraInfo"])


@given(
    st.integers(100, 599),
    st.one_of(_json, st.dictionaries(_keys, _json, max_size=7)),
    st.booleans(),
)
def test_interpret_never_raises(code: int, body: Any, query: bool) -> None:
    result = interpret(code, body, txid="ab" * 32, query=query)
    assert isinstance(result.outcome, ArcOutcome)
    assert (result.outcome is ArcOutcome.MINED) == (result.merkle_path is not None)
