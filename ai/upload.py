"""Training uploads under limits: gzip inflated as a stream with a size cap, rows and columns counted.

A 190 KB gzip can hold a 200 MB CSV. ``inflate`` never produces more than ``max_bytes`` of CSV (it
stops and raises ``UploadTooLarge`` at the first byte past the cap, however the file claims to be
sized); ``check_shape`` counts rows and columns while reading, stopping at the first one past a cap
(``DataError``). The API answers 413 and 422 for them before any training starts; the training
activity applies the same caps again to what it reads.
"""

from __future__ import annotations

import csv
import io
import zlib
from dataclasses import dataclass

from ai import artifacts
from ai.deals import DealMapping, deals_from_rows, train_deals
from ai.leads import LeadMapping, train_leads
from ai.tabular import GZIP_MAGIC, DataError, decode_text, parse_csv

CHUNK = 64 * 1024


class UploadTooLarge(ValueError):
    """The CSV (after decompression) is larger than the cap."""


@dataclass(frozen=True)
class UploadLimits:
    """Caps on a training upload: decompressed bytes, data rows, columns."""

    max_bytes: int
    max_rows: int
    max_columns: int


def inflate(raw: bytes, max_bytes: int) -> bytes:
    """The CSV bytes of an upload: gunzipped (every gzip member) as a stream when compressed, never more
    than ``max_bytes``."""
    if raw[:2] != GZIP_MAGIC:
        if len(raw) > max_bytes:
            raise UploadTooLarge(f"the CSV is larger than {max_bytes} bytes")
        return raw
    out = bytearray()
    data = raw
    try:
        while data:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            while not inflater.eof:
                if not data:
                    raise DataError("the gzip data is truncated")
                chunk, data = data[:CHUNK], data[CHUNK:]
                out += inflater.decompress(chunk, max_bytes + 1 - len(out))
                if len(out) > max_bytes:
                    raise UploadTooLarge(f"the CSV is larger than {max_bytes} bytes once decompressed")
                data = inflater.unconsumed_tail + data
            data = (inflater.unused_data + data).lstrip(b"\x00")  # the next gzip member, if any
    except zlib.error as exc:
        raise DataError(f"not valid gzip data: {exc}") from None
    return bytes(out)


def check_shape(text: str, limits: UploadLimits) -> tuple[int, int]:
    """(data rows, columns) of a CSV text; ``DataError`` at the first row or header past a cap."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError("the CSV is empty")
        columns = len(header)
        if columns > limits.max_columns:
            raise DataError(f"the CSV has {columns} columns; at most {limits.max_columns} are accepted")
        rows = 0
        for cells in reader:
            if len(cells) > limits.max_columns:
                raise DataError(f"row {rows + 2} has {len(cells)} cells; at most {limits.max_columns} are accepted")
            rows += 1
            if rows > limits.max_rows:
                raise DataError(f"the CSV has more than {limits.max_rows} rows; at most that many are accepted")
    except csv.Error as exc:
        raise DataError(f"not a readable CSV: {exc}") from None
    return rows, columns


def read_upload(raw: bytes, limits: UploadLimits) -> tuple[str, int, int]:
    """(CSV text, data rows, columns) of an upload within ``limits`` (``UploadTooLarge``, ``DataError``
    otherwise)."""
    text = decode_text(inflate(raw, limits.max_bytes))
    return text, *check_shape(text, limits)


def mapping_for(kind: str, mapping: dict | None) -> LeadMapping | DealMapping:
    """The column mapping of a ``leads`` or ``deals`` upload (pydantic ``ValidationError`` when invalid)."""
    return (LeadMapping if kind == "leads" else DealMapping).model_validate(mapping or {})


def train_upload(kind: str, raw: bytes, mapping: dict | None, limits: UploadLimits) -> bytes:
    """Train a model of ``kind`` on an upload (within ``limits``); returns the model's artifact bytes.

    Runs in the training activity's child process: what it allocates is that process's, not the hub's."""
    rows = parse_csv(read_upload(raw, limits)[0])
    chosen = mapping_for(kind, mapping)
    if isinstance(chosen, LeadMapping):
        return artifacts.dumps(train_leads(rows, chosen))
    return artifacts.dumps(train_deals(deals_from_rows(rows, chosen), chosen))
