"""``api/common.py``'s :class:`Body`: what each reader takes, its defaults, and the refusals the control API answers
with (scripts and the CLI show these messages)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overlay_node.api.common import Body
from overlay_node.errors import BadRequest


@pytest.mark.parametrize(
    ("fields", "read", "expected"),
    [
        ({"k": "v"}, lambda b: b.text("k"), "v"),
        ({}, lambda b: b.text("k", ""), ""),
        ({}, lambda b: b.text("k", None), None),
        ({"k": None}, lambda b: b.text("k", None), None),
        ({"k": "x" * 5000}, lambda b: b.text("k", ""), "x" * 5000),
        ({"k": "/a/b"}, lambda b: b.abs_path("k"), Path("/a/b")),
        ({}, lambda b: b.integer("k", None), None),
        ({}, lambda b: b.integer("k", 7), 7),
        ({"k": 0}, lambda b: b.integer("k", 1, maximum=10), 0),
        ({"k": "12"}, lambda b: b.integer("k", digits=True), 12),
        ({}, lambda b: b.seconds("k", 30, maximum=3600), 30.0),
        ({"k": -1}, lambda b: b.seconds("k", None), -1.0),
        ({"k": 0.5}, lambda b: b.positive("k"), 0.5),
        ({}, lambda b: b.boolean("k", True), True),
        ({}, lambda b: b.strings("k"), []),
        ({"k": ["a", "b"]}, lambda b: b.strings("k", required=True, max_items=2), ["a", "b"]),
    ],
)
def test_readers_take_good_fields_and_defaults(
    fields: dict[str, Any], read: Callable[[Body], Any], expected: Any
) -> None:
    assert read(Body(fields)) == expected


@pytest.mark.parametrize(
    ("fields", "read", "message"),
    [
        ({}, lambda b: b.text("k", max_len=64), "field 'k' must be a non-empty string of at most 64 characters"),
        ({"k": ""}, lambda b: b.text("k"), "field 'k' must be a non-empty string of at most 4096 characters"),
        ({"k": None}, lambda b: b.text("k", ""), "field 'k' must be a string"),
        ({"k": "xyz"}, lambda b: b.text("k", "", max_len=2), "field 'k' must be a string of at most 2 characters"),
        ({"k": 5}, lambda b: b.text("k", None, expected="an identity key"), "field 'k' must be an identity key"),
        ({"k": "a/b"}, lambda b: b.abs_path("k"), "field 'k' must be an absolute path (the CLI resolves it)"),
        ({"k": -1}, lambda b: b.integer("k", None), "field 'k' must be a non-negative integer"),
        ({"k": True}, lambda b: b.integer("k", None), "field 'k' must be a non-negative integer"),
        ({"k": 0}, lambda b: b.integer("k", None, minimum=1), "field 'k' must be an integer >= 1"),
        ({}, lambda b: b.integer("k", minimum=1, maximum=9, digits=True), "field 'k' must be an integer in [1, 9]"),
        (
            {"k": "²"},
            lambda b: b.integer("k", minimum=1, maximum=9, digits=True),
            "field 'k' must be an integer in [1, 9]",
        ),
        ({"k": "5"}, lambda b: b.integer("k", None), "field 'k' must be a non-negative integer"),
        ({"k": None}, lambda b: b.integer("k", 1), "field 'k' must be a non-negative integer"),
        ({"k": 0}, lambda b: b.seconds("k", 30, maximum=3600), "field 'k' must be a number of seconds in (0, 3600]"),
        ({"k": False}, lambda b: b.seconds("k", None), "field 'k' must be a number of seconds"),
        ({"k": math.inf}, lambda b: b.positive("k"), "field 'k' must be a positive number"),
        ({"k": 0}, lambda b: b.positive("k"), "field 'k' must be a positive number"),
        ({"k": "yes"}, lambda b: b.boolean("k", True), "field 'k' must be true or false"),
        ({"k": ["a", 1]}, lambda b: b.strings("k"), "field 'k' must be a list of strings"),
        ({"k": None}, lambda b: b.strings("k"), "field 'k' must be a list of strings"),
        ({"k": ["a"] * 3}, lambda b: b.strings("k", max_items=2), "field 'k' must be a list of at most 2 strings"),
        ({}, lambda b: b.strings("k", required=True), "field 'k' must be a list of strings"),
        (
            {"k": []},
            lambda b: b.strings("k", min_items=1, expected="a non-empty list"),
            "field 'k' must be a non-empty list",
        ),
        ({"k": [""]}, lambda b: b.strings("k", blank=False), "field 'k' must be a list of strings"),
    ],
)
def test_readers_refuse_bad_fields_by_name(fields: dict[str, Any], read: Callable[[Body], Any], message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        read(Body(fields))
    assert str(refused.value) == message
