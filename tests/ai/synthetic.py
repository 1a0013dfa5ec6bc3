"""Small synthetic histories for the AI tests (the real data is used only where present)."""

from __future__ import annotations

import csv
import io
import random
from datetime import date, timedelta

LEAD_HEADER = [
    "Prospect ID", "Lead Number", "Lead Source", "Occupation", "TotalVisits", "Total Time Spent on Website",
    "Specialization", "Converted", "Tags", "Lead Quality", "Lead Profile", "Asymmetrique Activity Score",
]


def lead_rows(n: int = 400, seed: int = 1) -> list[dict[str, str]]:
    """Leads whose conversion depends on source, occupation and time on site; the leakage columns copy the
    outcome exactly (a model that used them would be perfect) and Specialization is often ``Select``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        source = rng.choice(["Google", "Reference", "Olark Chat", "Direct Traffic"])
        occupation = rng.choice(["Unemployed", "Working Professional", "Student", ""])
        seconds = rng.choice([0, 0, rng.randint(1, 300), rng.randint(300, 2000)])
        z = -1.2 + 1.8 * (source == "Reference") + 1.5 * (occupation == "Working Professional") + seconds / 700
        converted = int(rng.random() < 1 / (1 + 2.718 ** -z))
        rows.append({
            "Prospect ID": f"lead-{i:04d}", "Lead Number": str(600000 + i), "Lead Source": source,
            "Occupation": occupation, "TotalVisits": str(rng.randint(0, 9)),
            "Total Time Spent on Website": str(seconds),
            "Specialization": rng.choice(["Select", "Finance", "Marketing", ""]), "Converted": str(converted),
            "Tags": "Closed by Horizzon" if converted else "Ringing",
            "Lead Quality": "High in Relevance" if converted else "Not Sure",
            "Lead Profile": "Potential Lead" if converted else "Select",
            "Asymmetrique Activity Score": str(17 if converted else 13),
        })
    return rows


def with_last_activity(rows: list[dict[str, str]], seed: int = 2) -> list[dict[str, str]]:
    """The rows with a ``Last Activity`` (known after sales contact) that tells converted leads apart 80% of the
    time, as X Education's does."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        talked = (row["Converted"] == "1") == (rng.random() < 0.8)
        out.append({**row, "Last Activity": "Had a Phone Conversation" if talked else "Email Bounced"})
    return out


def to_csv(rows: list[dict[str, str]], header: list[str] | None = None, trailing_comma: bool = True) -> bytes:
    """CSV bytes in the X Education style: CRLF line ends and a trailing comma on every line."""
    header = header or list(rows[0])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=",\r\n" if trailing_comma else "\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(h, "") for h in header])
    return out.getvalue().encode()


DEAL_HEADER = ["opportunity_id", "sales_agent", "product", "account", "deal_stage", "engage_date", "close_date",
               "close_value"]


def deal_rows(n: int = 600, seed: int = 2, signal: bool = True) -> list[dict[str, str]]:
    """Maven-shaped deals: closed ones (Won/Lost, dates, close_value 0 when lost) and some open ones.

    With ``signal``, product ``GTXPro`` wins 90% and ``MG Special`` 15%; without, every deal is a coin flip
    at 60%."""
    rng = random.Random(seed)
    start = date(2017, 1, 1)
    rows = []
    for i in range(n):
        product = rng.choice(["GTXPro", "MG Special", "GTX Basic"])
        engaged = start + timedelta(days=rng.randint(0, 300))
        p = {"GTXPro": 0.9, "MG Special": 0.15, "GTX Basic": 0.6}[product] if signal else 0.6
        if i % 10 == 9:
            stage, closed, value = "Engaging", "", ""
        else:
            won = rng.random() < p
            stage = "Won" if won else "Lost"
            closed = (engaged + timedelta(days=rng.randint(1, 120))).isoformat()
            value = str(rng.randint(500, 5000)) if won else "0"
        rows.append({
            "opportunity_id": f"OPP{i:05d}", "sales_agent": rng.choice(["Ann", "Bob", "Cy"]), "product": product,
            "account": rng.choice(["Acme", "Betatech", ""]) if stage != "Engaging" else "",
            "deal_stage": stage, "engage_date": engaged.isoformat(), "close_date": closed, "close_value": value,
        })
    return rows


PRODUCTS_CSV = b"product,series,sales_price\r\nGTX Basic,GTX,550\r\nGTX Pro,GTX,4821\r\nMG Special,MG,55\r\n"
