"""Connecting to Temporal with the hub's encrypting data converter; task-queue names."""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from hub.settings import Settings
from hub.telemetry import temporal_interceptor
from hub.vault import DataKeys, EncryptionCodec, Vault


def provider_queue(settings: Settings, provider: str) -> str:
    """The task queue whose activities call one provider (rate-limited per provider)."""
    return f"{settings.task_queue}-{provider}"


def data_converter(vault: Vault, keys: DataKeys | None = None):  # noqa: ANN201 - temporalio DataConverter
    """Pydantic-aware converter whose payloads are encrypted: an org's under its data key (``keys``), the rest by
    the vault."""
    return dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec(vault, keys))


async def connect(settings: Settings, vault: Vault, address: str | None = None, keys: DataKeys | None = None) -> Client:
    """A Temporal client for the hub's namespace."""
    return await Client.connect(
        address or settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(vault, keys),
        interceptors=[temporal_interceptor()],
    )
