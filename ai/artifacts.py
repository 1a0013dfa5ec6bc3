"""Model files: joblib bytes of a model this hub trained, tagged with a format and the model version.

Only ever load artifacts the hub wrote itself (a model file runs code when unpickled): the CLI's
``--out`` files and the ``ai_models`` rows, whose SHA-256 is checked before loading. Uploads via the
API are CSVs that the hub trains on, never model files.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import joblib

from ai.deals import DealModel
from ai.leads import LeadModel

ARTIFACT_FORMAT = "fulqrun-ai-artifact/1"
Model = LeadModel | DealModel


class ArtifactError(ValueError):
    """Not a model file of this hub, or corrupted."""


def kind_of(model: Model) -> str:
    """``leads`` or ``deals``."""
    return "leads" if isinstance(model, LeadModel) else "deals"


def dumps(model: Model) -> bytes:
    """The model as bytes."""
    buffer = io.BytesIO()
    payload = {"format": ARTIFACT_FORMAT, "kind": kind_of(model), "version": model.version, "model": model}
    joblib.dump(payload, buffer, compress=3)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def loads(data: bytes, expected_sha256: str | None = None, kind: str | None = None) -> Model:
    """A model from bytes written by ``dumps`` (checksum checked first when given)."""
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise ArtifactError("model artifact checksum mismatch")
    try:
        payload = joblib.load(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error to the caller
        raise ArtifactError(f"not a model file: {type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError("not a FulQrun Hub model file")
    if kind is not None and payload.get("kind") != kind:
        raise ArtifactError(f"this is a {payload.get('kind')} model, not a {kind} model")
    return payload["model"]


def save(model: Model, path: str | Path) -> str:
    """Write the model to ``path``; returns the file's SHA-256."""
    data = dumps(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return sha256(data)


def load(path: str | Path, kind: str | None = None) -> Model:
    """Read a model file written by ``save``."""
    return loads(Path(path).read_bytes(), kind=kind)
