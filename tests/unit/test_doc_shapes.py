"""The shape the documentation tests compare (tests/integration/doc_commands.py): figures, keys and paths may
change between runs; keys of key/value answers, table columns and the wording of messages may not."""

from __future__ import annotations

from tests.integration.doc_commands import shape, shape_mismatch

SHOWN = """\
hash         597ce824a35c056dffe26285d9312e3a4b0c7362735b9d5b6a452c7bc64bbf5d
uhrp url     XUTaC6TUR9WnAETumsmbzPWEZzxpB9bjccsFBW6bjQ5AfsgXNJWH
size         24173
┏━━━━━━━━━━┳━━━━━━━┓
┃ protocol ┃ price ┃
┡━━━━━━━━━━╇━━━━━━━┩
│ SLAP     │ 2     │
└──────────┴───────┘
...
wrote 24173 bytes to /tmp/k-guide/stations.csv (verified)
"""


def test_other_figures_keys_and_paths_are_the_same_shape() -> None:
    printed = (
        SHOWN.replace("597ce824a35c056d", "0000000000000000")
        .replace(
            "XUTaC6TUR9WnAETumsmbzPWEZzxpB9bjccsFBW6bjQ5AfsgXNJWH",
            "XUTXXkUrntcCnJiRSrtVy9zJErzBqKNBSYWttMYwkkZRM8YvXer5",
        )
        .replace("24173", "9762")
        .replace("/tmp/k-guide", "/home/someone/work")
        .replace("│ SLAP     │ 2     │", "│ SHIP     │ 0     │\n│ SLAP     │ 2     │")
        .replace("...\n", "replicas     0 of 0\n")
    )
    assert shape_mismatch(SHOWN, printed) is None


def test_a_renamed_column_a_missing_key_or_new_wording_is_stale() -> None:
    assert shape_mismatch(SHOWN, SHOWN.replace("┃ price ┃", "┃ cost  ┃"))
    assert shape_mismatch(SHOWN, SHOWN.replace("uhrp url     ", "url          "))
    assert shape_mismatch(SHOWN, SHOWN.replace("(verified)", "(checked)"))
    assert shape_mismatch(SHOWN, "\n".join(reversed(SHOWN.splitlines())))  # in order


def test_shape_keeps_csv_headers_and_row_kinds() -> None:
    csv = "level,provider,name,packets,bytes\nprovider,02ab,,1,2\npayment,02ab,ff,,\n"
    assert shape(csv) == [
        "csv: level,provider,name,packets,bytes",
        "csv row: provider, 5 fields",
        "csv row: payment, 5 fields",
    ]
