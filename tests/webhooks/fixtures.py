"""The shared real webhook payloads, as (scheme, provider, path, content type) for the webhook tests."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import shared_data

#: shared-data folder → (signing scheme, provider of the connection)
FOLDERS = {
    "stripe": ("stripe", "stripe"),
    "slack": ("slack", "slack"),
    "docusign": ("docusign", "docusign"),
    "gong": ("gong", "gong"),
    "msgraph": ("microsoft", "microsoft"),
    "hubspot": ("hubspot", "hubspot"),
}


def content_type(path: Path) -> str:
    """The content type the provider sends this payload with."""
    if path.suffix == ".xml":
        return "text/xml; charset=utf-8"
    if "form-urlencoded" in path.name:
        return "application/x-www-form-urlencoded"
    return "application/json"


def payload_files() -> list[tuple[str, str, Path]]:
    """Every payload file (not the HTTP transcripts of Graph validation requests): (scheme, provider, path)."""
    root = shared_data("webhooks")
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        scheme, provider = FOLDERS[folder.name]
        for path in sorted(folder.iterdir()):
            if not path.name.endswith(".http.txt"):
                out.append((scheme, provider, path))
    return out


def validation_transcripts() -> list[Path]:
    """The Graph / SharePoint subscription validation request transcripts."""
    return sorted(shared_data("webhooks", "msgraph").glob("validation_request.*.http.txt"))
