"""The one settings object: every environment variable the hub reads, with the ``HUB_`` prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_MARKERS = ("change-me", "changeme", "placeholder", "example", "xxx")


class Settings(BaseSettings):
    """Hub configuration, read from ``HUB_*`` environment variables and an optional ``.env`` file."""

    model_config = SettingsConfigDict(env_prefix="HUB_", env_file=".env", extra="ignore")

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path(".hub")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default SQLite under data_dir"
    )
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_port: int = 8233
    task_queue: str = "fulqrun-hub"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_url: str | None = Field(default=None, description="externally visible base URL of the API")
    codec_cors_origins: list[str] | None = Field(
        default=None,
        description="browser origins of the Temporal UI allowed to call /codec (default: the embedded UI's)",
    )
    vault_keys: SecretStr | None = Field(
        default=None,
        description="comma-separated 'key_id:base64url-32-bytes' entries, newest last",
    )
    max_body_bytes: int = 1_048_576
    ai_upload_max_bytes: int = Field(default=16 * 1024 * 1024,
                                     description="largest training CSV once decompressed (413 past it)")
    ai_upload_max_rows: int = Field(default=100_000, description="most data rows in a training CSV (422 past it)")
    ai_upload_max_columns: int = Field(default=200, description="most columns in a training CSV (422 past it)")
    ai_training_max_active: int = Field(default=2, ge=1, description="an org's training jobs queued or running at "
                                        "once (429 past it: one org's uploads cannot queue up the others')")
    webhook_relay: bool = Field(default=True, description="run the webhook inbox relay inside the API process")
    webhook_max_attempts: int = Field(default=5, description="failed processing attempts before dead-letter")
    http_allowlist: list[str] = Field(
        default_factory=list,
        description="hosts or CIDRs a tenant-directed request (connection URLs, CRM callback, http.post) may reach "
        "although private or loopback: the egress policy's one opening",
    )
    ca_bundle_dir: Path | None = Field(
        default=None, description="the one directory a connection's ca_bundle may name a file in (else PEM text only)"
    )
    api_key_cache_seconds: float = Field(
        default=5.0, ge=0, description="how long a process reuses a resolved API key; bounds a revocation's delay elsewhere"
    )
    day_seconds: int = Field(
        default=86400, ge=1,
        description="length of a day for relative-date rule triggers; shorter only in tests (refused in production)",
    )
    shared_data: Path = Path("../shared/data")
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _production_needs_real_keys(self) -> Settings:
        if self.env != "production":
            return self
        if self.vault_keys is None or not self.vault_keys.get_secret_value().strip():
            raise ValueError("HUB_VAULT_KEYS is required when HUB_ENV=production")
        raw = self.vault_keys.get_secret_value().lower()
        for marker in PLACEHOLDER_MARKERS:
            if marker in raw:
                raise ValueError(f"HUB_VAULT_KEYS holds a placeholder value ({marker!r}); set real keys")
        if self.database_url is None:
            raise ValueError("HUB_DATABASE_URL is required when HUB_ENV=production")
        if self.day_seconds != 86400:
            raise ValueError("HUB_DAY_SECONDS is for tests only: it must stay 86400 when HUB_ENV=production")
        return self

    @property
    def codec_origins(self) -> list[str]:
        """Origins whose browser pages (the Temporal UI) may call ``/codec``."""
        if self.codec_cors_origins is not None:
            return self.codec_cors_origins
        return [f"http://{host}:{self.temporal_ui_port}" for host in ("127.0.0.1", "localhost")]

    @property
    def base_url(self) -> str:
        """The hub's URL as providers and browsers reach it: ``HUB_PUBLIC_URL``, else the API's own address."""
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    def webhook_url(self, provider: str, connection_id: str) -> str:
        """Where a connection's provider posts its webhooks."""
        return f"{self.base_url}/webhooks/{provider}/{connection_id}"

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite under the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'hub.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache after changing the environment)."""
    return Settings()
