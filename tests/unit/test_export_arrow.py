"""Frozen rows parsed straight into Arrow (`pairs_table`) equal the rows parsed by orjson and converted in
Python (`pairs_record_batch`), whatever their texts hold."""

from __future__ import annotations

import json

import orjson
import pyarrow as pa
import pytest

from app.services.export import STATS_TYPE, ExportError, _char_diff_slice, pairs_record_batch, pairs_table


def _row(n: int, **changes) -> dict:
    row = {
        "id": f"edit-{n}", "item_id": n, "project": "demo", "prompt": "Say hi", "original": "Hello wrld.",
        "edited": "Hello world.", "outcome": "edited",
        "token_labels": {"tokenizer": "tok", "tokenizer_hash": "abc", "algorithm": "redline-labels/1",
                         "original_ids": [9, 70000, 3], "original_labels": [0, 3, 0],
                         "edited_ids": [9, 71000, 3], "edited_labels": [0, 3, 0]},
        "char_diff": [[0, "Hello w"], [1, "o"], [0, "rld."]],
        "stats": {name: 1 for name in STATS_TYPE.names} | {"edit_rate": 0.3333333333333333},
        "annotator_id": "ann_0123456789ab", "review": None, "created_at": "2026-01-01T00:00:00+00:00",
    }
    return row | changes


AWKWARD = [
    _row(1),
    # Texts that look like the markers the char_diff slice looks for, quotes, backslashes, unicode, newlines.
    _row(2, project='p"char_diff":[', prompt="ends with a backslash \\", original='x,"created_at":y ]"é\n\t',
         edited="", char_diff=[[0, '[0,"'], [-1, '"],[1,"\\'], [1, "4"], [0, "😀 \u2028"]],
         annotator_id='ann_"char_diff":[[',
         review={"verdict": "fix_and_accept", "reviewer_id": "rev_1", "comment": '"created_at":',
                 "annotator_edited": "draft", "created_at": "2026-01-02T00:00:00+00:00"}),
    _row(3, char_diff=[], outcome="no_change_needed",
         review={"verdict": "accept", "reviewer_id": "rev_1", "comment": "", "annotator_edited": None,
                 "created_at": "2026-01-02T00:00:00+00:00"}),
    _row(4, stats={name: 0 for name in STATS_TYPE.names} | {"edit_rate": 0.0}),
    # Token labels a fix left without layers, or with empty lists; a string holding the token labels key.
    _row(5, token_labels=None, prompt=',"token_labels":{"original_ids": [1]}'),
    _row(6, token_labels={"tokenizer": "t", "tokenizer_hash": "h", "algorithm": "a", "original_ids": [],
                          "original_labels": [], "edited_ids": [5], "edited_labels": [1]}),
]


def _stored(row: dict) -> bytes:
    """A row as the freeze stores it: top-level keys sorted and compact, layers as the edit stored them
    (json.dumps: spaces after separators, keys in their own order)."""
    pieces = []
    for key in sorted(row):
        value = row[key]
        text = json.dumps(value) if key in ("token_labels", "char_diff", "stats") else orjson.dumps(value).decode()
        pieces.append(f"{json.dumps(key)}:{text}")
    return ("{" + ",".join(pieces) + "}").encode()


@pytest.mark.parametrize("layout", ["canonical", "stored", "unsorted"])
def test_pairs_table_equals_the_python_conversion(layout):
    """Rows frozen before hash format 2 (canonical JSON), as the freeze stores them now, and of any other key
    order (read by parsing them first) all give the table the Python conversion gives."""
    write = {"canonical": lambda row: orjson.dumps(row, option=orjson.OPT_SORT_KEYS), "stored": _stored,
             "unsorted": lambda row: json.dumps(dict(reversed(row.items()))).encode()}[layout]
    table = pairs_table([write(row) for row in AWKWARD])
    expected = pa.Table.from_batches([pairs_record_batch(AWKWARD)])
    assert table.schema == expected.schema
    assert table.equals(expected)
    rows = table.to_pylist()
    assert rows[1]["char_diff"][1] == {"op": -1, "text": '"],[1,"\\'}
    assert rows[4]["token_labels"] is None and rows[5]["token_labels"]["original_ids"] == []


@pytest.mark.parametrize("row", AWKWARD, ids=lambda row: row["id"])
def test_char_diff_slice_is_the_parsed_value(row):
    assert orjson.loads(_char_diff_slice(orjson.dumps(row, option=orjson.OPT_SORT_KEYS))) == row["char_diff"]


def test_char_diff_falls_back_to_parsing_the_row():
    line = orjson.dumps({"char_diff": [[0, "a"]], "zzz": 1})  # no created_at after it
    assert orjson.loads(_char_diff_slice(line)) == [[0, "a"]]


@pytest.mark.parametrize(("name", "values"), [("original_ids", [1.5, 2]), ("edited_labels", [0, 300]),
                                              ("edited_ids", [2**31])])
def test_token_lists_that_are_not_whole_numbers_of_their_type_are_refused(name, values):
    row = _row(7, token_labels={**_row(7)["token_labels"], name: values})
    with pytest.raises(ExportError, match=f"token_labels.{name}: a list holds something other than whole numbers"):
        pairs_table([orjson.dumps(row, option=orjson.OPT_SORT_KEYS)])
