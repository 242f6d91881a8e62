"""Frozen rows parsed straight into Arrow (`pairs_table`) equal the rows parsed by orjson and converted in
Python (`pairs_record_batch`), whatever their texts hold."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from app.services.export import STATS_TYPE, _char_diff, pairs_record_batch, pairs_table


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
]


def test_pairs_table_equals_the_python_conversion():
    lines = [orjson.dumps(row, option=orjson.OPT_SORT_KEYS) for row in AWKWARD]
    table = pairs_table(lines)
    expected = pa.Table.from_batches([pairs_record_batch(AWKWARD)])
    assert table.schema == expected.schema
    assert table.equals(expected)
    assert table.to_pylist()[1]["char_diff"][1] == {"op": -1, "text": '"],[1,"\\'}


@pytest.mark.parametrize("row", AWKWARD, ids=lambda row: row["id"])
def test_char_diff_slice_is_the_parsed_value(row):
    assert _char_diff(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)) == row["char_diff"]


def test_char_diff_falls_back_to_parsing_the_row():
    line = orjson.dumps({"char_diff": [[0, "a"]], "zzz": 1})  # no created_at after it
    assert _char_diff(line) == [[0, "a"]]
