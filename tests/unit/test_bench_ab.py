"""bench/ab.py: figures read from a bench's printed table, the A-B-B-A rounds compared, one run of a bench."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import bench_module

TABLE = """\
measure                                                       value           target
paid packets/s, 1 subscriber, W=100                           46663         >= 20000
paid packets/s, 1 subscriber, W=1                              1623          >= 2000
  CPU ms per payment: producer, subscriber, ledger     0.49 0.48 0.09
raw: coincurve sign + verify /s per core (before, after)         14645, 14692
"""

ab = bench_module("ab.py")


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ("paid packets/s, 1 subscriber, W=1", 1623.0),  # not W=100's line; the target's number is not the value
        ("W=1", 1623.0),
        ("W=10", None),  # not a word's end in W=100
        ("CPU ms per payment: producer", 0.49),
        ("CPU ms per payment: producer@2", 0.48),
        ("CPU ms per payment: producer@3", 0.09),
        ("raw: coincurve sign + verify /s per core (before, after)@2", 14692.0),
        ("CPU ms per payment: producer@4", None),  # fewer numbers than asked
        ("W=1000", None),  # no such line
    ],
)
def test_a_figure_is_the_numbers_after_its_label(spec: str, value: float | None) -> None:
    assert ab.Figure.parse(spec).read(TABLE) == value


def test_a_label_with_an_at_sign_but_no_index_is_the_whole_label() -> None:
    assert ab.Figure.parse("rate @ peak") == ab.Figure("rate @ peak")
    assert ab.Figure.parse("x@0") == ab.Figure("x@0")


def test_rounds_are_compared_by_side_and_by_round() -> None:
    rounds = [
        {"A": [100.0, 110.0], "B": [120.0, 100.0]},  # B higher (220 > 210)
        {"A": [100.0, 100.0], "B": [90.0, 100.0]},  # A higher
        {"A": [100.0, None], "B": [200.0, 200.0]},  # a failed run: its values count, the round does not
    ]
    got = ab.compare(rounds)
    assert got["A"]["values"] == [100.0, 110.0, 100.0, 100.0, 100.0]
    assert got["B"]["n"] == 6
    assert got["B"]["median"] == 110.0
    assert (got["rounds_b_higher"], got["rounds_counted"]) == (1, 2)
    assert got["ratio_b_a"] == pytest.approx((810 / 6) / 102)
    text = ab.report([ab.Figure("rate")], {"rate": got})
    assert "B / A of the means 1.324; B higher in 1 of 2 rounds" in text


def test_one_run_reads_its_own_checkout_and_environment(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "fake.py").write_text(
        "import os\nprint('checkout', os.environ['PYTHONPATH'], os.getcwd())\n"
        "print('speed    ', os.environ.get('SPEED', '0'), '     >= 5')\n"
    )
    output, status, _seconds = ab._run(tmp_path, ["fake.py"], {"SPEED": "7"})
    assert status == 0
    assert ab.Figure("speed").read(output) == 7.0
    assert f"checkout {tmp_path} {tmp_path}" in output  # its imports and its working directory: that side's tree
    _output, status, _seconds = ab._run(tmp_path, ["fake.py", "extra"], {"PYTHONPATH": "elsewhere"})
    assert status == 0
    assert f"checkout {tmp_path} " in _output  # a side's PYTHONPATH is always its own checkout
