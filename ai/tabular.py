"""Reading the messy CSV exports the models learn from: BOM, CRLF, trailing commas, placeholders.

``read_csv`` returns one dict per row keyed by header name; unnamed columns (the empty 38th column a
trailing comma on every line produces) are dropped. ``clean`` turns placeholder values such as
``Select`` or an empty cell into ``None`` (missing).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import sparse
from threadpoolctl import ThreadpoolController

GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """The training or scoring data cannot be used (missing column, no outcome, too few rows...)."""


def decode_csv_bytes(raw: bytes) -> str:
    """CSV text from the bytes of a trusted local file: gunzipped if gzip-compressed (uploads go through
    ``ai.upload``, which caps what they inflate to), then ``decode_text``."""
    return decode_text(gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw)


def decode_text(raw: bytes) -> str:
    """CSV text from uncompressed bytes: UTF-8 (BOM stripped), cp1252 as a fallback."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


def parse_csv(text: str) -> list[dict[str, str]]:
    """Rows of a CSV text as dicts; unnamed header cells (trailing commas) and short rows are handled."""
    try:
        return _parse(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise DataError(f"not a readable CSV: {exc}") from None


def _parse(reader: Iterable[list[str]]) -> list[dict[str, str]]:
    rows_iter = iter(reader)
    try:
        header = [h.strip() for h in next(rows_iter)]
    except StopIteration:
        raise DataError("the CSV is empty") from None
    named = [(i, h) for i, h in enumerate(header) if h]
    if len({h for _, h in named}) != len(named):
        raise DataError("the CSV header repeats a column name")
    rows = []
    for cells in rows_iter:
        if not any(c.strip() for c in cells):
            continue
        rows.append({h: (cells[i] if i < len(cells) else "") for i, h in named})
    return rows


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file (plain or gzip) as dicts keyed by header name."""
    return parse_csv(decode_csv_bytes(Path(path).read_bytes()))


def clean(value: object, placeholders: Iterable[str] = ()) -> str | None:
    """A cell as a stripped string, or ``None`` when it is empty or a placeholder (case-insensitive)."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or text.casefold() in {p.casefold() for p in placeholders}:
        return None
    return text


def to_float(value: str | None) -> float | None:
    """A number, or ``None`` when the cell is missing or not numeric."""
    if value is None:
        return None
    try:
        number = float(value.replace(",", "")) if isinstance(value, str) else float(value)
    except ValueError:
        return None
    return number if number == number else None  # NaN → missing


@lru_cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded native libraries once (slow); limiting is then cheap


def one_thread():  # noqa: ANN201 - a context manager
    """Run OpenMP/BLAS on one thread inside the block: on a few shared cores, small scoring batches and
    concurrent requests are much faster without thread hand-offs."""
    return _threadpools().limit(limits=1)


def points(x: float) -> str:
    """``12 points``, ``1 point`` (absolute value, rounded)."""
    n = round(abs(x))
    return f"{n} point" + ("" if n == 1 else "s")


def fingerprint(rows: Sequence[dict[str, str]], *extra: str) -> str:
    """A short content hash of rows (in order) and extra strings: the basis of model versions."""
    digest = hashlib.sha256()
    for part in extra:
        digest.update(part.encode())
        digest.update(b"\x00")
    for row in rows:
        for key in sorted(row):
            digest.update(f"{key}\x1f{row[key]}\x1e".encode())
        digest.update(b"\n")
    return digest.hexdigest()[:12]


class CategoryCoder:
    """Integer codes for categorical values: one per value seen ``min_count`` times, one shared "other"."""

    def __init__(self, cats: np.ndarray, min_count: int = 10, max_values: int = 250) -> None:
        self.maps: list[dict[str, int]] = []
        for j in range(cats.shape[1]):
            counts = Counter(cats[:, j].tolist())
            frequent = sorted(v for v, c in counts.most_common(max_values) if c >= min_count)
            self.maps.append({v: i for i, v in enumerate(frequent)})
        self.sizes = [len(m) + 1 for m in self.maps]
        self.offsets = np.cumsum([0, *self.sizes[:-1]]).astype(np.int64)

    def encode(self, cats: np.ndarray) -> np.ndarray:
        """Codes for strings; values not seen often enough get the column's "other" code."""
        codes = np.empty(cats.shape, dtype=np.int64)
        for j, mapping in enumerate(self.maps):
            other = len(mapping)
            codes[:, j] = [mapping.get(v, other) for v in cats[:, j]]
        return codes

    def onehot(self, codes: np.ndarray) -> sparse.csr_matrix:
        """One column per code."""
        n, k = codes.shape
        return sparse.csr_matrix(
            (np.ones(n * k), (np.repeat(np.arange(n), k), (codes + self.offsets).ravel())),
            shape=(n, int(sum(self.sizes))),
        )
