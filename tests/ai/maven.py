"""The Maven CRM history as a CRM imports it through the API: each opportunity registered at its final stage
(won at Keep), valued at its product's list price, dated with ``engaged_at`` / ``closed_at``, the lost ones then
closed lost. Shared by ``tests/ai/test_maven_through_api.py`` (a slice) and ``bench/maven_retrain.py`` (all)."""

from __future__ import annotations

from pathlib import Path

from ai.deals import product_key
from ai.tabular import read_csv

STAGES = {"Prospecting": "prospect", "Engaging": "engage", "Won": "keep", "Lost": "engage"}
PIPELINE = {
    "apiVersion": "fulqrun.io/v1", "kind": "Pipeline", "metadata": {"name": "maven"},
    "spec": {"initial": "prospect",
             "stages": [{"key": k, "name": k.title(), "color": "#2563EB", "probability": p}
                        for k, p in (("prospect", 0.1), ("engage", 0.3), ("acquire", 0.6), ("keep", 1.0))],
             "transitions": [{"from": a, "to": b} for a, b in (("prospect", "engage"), ("engage", "acquire"),
                                                               ("acquire", "keep"))]},
}  # fmt: skip
CLOSE_LOST = {"reason": "lost in Maven", "actor": {"id": "import", "role": "ae"}}


def maven_rows(root: Path, size: int | None = None) -> list[dict]:
    """The opportunities of ``root/sales_pipeline.csv`` with their product's list price (``price``); with ``size``,
    every k-th row so the stage mix is kept."""
    prices = {product_key(r["product"]): float(r["sales_price"]) for r in read_csv(root / "products.csv")}
    rows = read_csv(root / "sales_pipeline.csv")
    if size is not None:
        rows = rows[:: max(1, len(rows) // size)][:size]
    return [{**r, "price": prices.get(product_key(r["product"]))} for r in rows]


def body(row: dict) -> dict:
    """What a CRM sends: no outcome value (Maven's ``close_value`` is 0 for every loss), the list price instead."""
    out = {"name": f"{row['account'] or 'Unassigned'} - {row['product']}", "amount": row["price"],
           "product": row["product"], "account": {"name": row["account"] or None}, "owner": row["sales_agent"],
           "stage": STAGES[row["deal_stage"]], "engaged_at": row["engage_date"] or None}
    if row["deal_stage"] in ("Won", "Lost"):
        out["closed_at"] = row["close_date"]
    return out
