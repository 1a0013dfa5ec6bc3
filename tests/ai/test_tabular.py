"""CSV reading: trailing commas, CRLF, BOM, gzip, placeholders."""

from __future__ import annotations

import gzip

import pytest

from ai.tabular import DataError, clean, decode_csv_bytes, parse_csv, to_float


def test_trailing_comma_and_crlf_drop_the_unnamed_column() -> None:
    rows = parse_csv(decode_csv_bytes(b"\xef\xbb\xbfa,b,\r\n1,x,\r\n2,,\r\n"))
    assert rows == [{"a": "1", "b": "x"}, {"a": "2", "b": ""}]


def test_gzip_and_short_rows() -> None:
    rows = parse_csv(decode_csv_bytes(gzip.compress(b"a,b\n1\n\n3,4\n")))
    assert rows == [{"a": "1", "b": ""}, {"a": "3", "b": "4"}]


def test_repeated_header_and_empty_file_are_refused() -> None:
    with pytest.raises(DataError, match="repeats"):
        parse_csv("a,a\n1,2\n")
    with pytest.raises(DataError, match="empty"):
        parse_csv("")


def test_placeholders_are_missing() -> None:
    assert clean(" Select ", ["Select"]) is None
    assert clean("select", ["Select"]) is None
    assert clean("  ") is None
    assert clean(" Finance ", ["Select"]) == "Finance"
    assert to_float("1,532") == 1532.0
    assert to_float("n/a") is None
    assert to_float("nan") is None
