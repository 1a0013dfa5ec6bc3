"""The provider catalogue (``providers.yaml``), validated with pydantic when it is loaded.

``catalogue()`` returns every provider; ``provider(name)`` one of them; ``Provider.endpoints(config)``
resolves its URLs and scopes for one connection (config overrides, ``{placeholders}`` filled in).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import re
import string
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

log = logging.getLogger("connectors.catalogue")

CATALOGUE_PATH = Path(__file__).with_name("providers.yaml")

AuthMode = Literal["oauth2_code_pkce", "client_credentials", "jwt_grant", "api_key", "basic"]
TOKEN_MODES = ("oauth2_code_pkce", "client_credentials", "jwt_grant")

# The secrets each auth mode needs at connection time (besides optional ``webhook_secrets``).
REQUIRED_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "oauth2_code_pkce": (),  # client_secret is optional: public PKCE clients have none
    "client_credentials": ("client_secret",),
    "jwt_grant": ("private_key",),
    "api_key": ("api_key",),
    "basic": ("username", "password"),
}
OPTIONAL_CREDENTIALS: dict[str, tuple[str, ...]] = {"oauth2_code_pkce": ("client_secret",)}
URL_KEYS = ("authorization_url", "token_url", "base_url")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration(value: object) -> object:
    """``15m``, ``1h``, ``24h``, ``2d`` (or seconds as a number) → timedelta."""
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Strict):
    """The provider's published request rate, what it belongs to, and the share of it the hub uses.

    ``scope`` says whose budget it is: ``connection`` (the connection's own account, workspace or tenant —
    each connection has its own budget) or ``app`` (one budget for the hub's app across every connection).
    Every request the provider sees draws from that budget, across all worker processes, at
    ``queue_per_second`` (headroom × the limit): requests leave evenly spaced, so however late a busy
    process sends one (up to ``1 / headroom - 1`` of the provider's window, 53 ms at 0.95 on a per-second
    limit), the provider never sees more than its limit in any window.
    """

    per_second: PositiveFloat
    headroom: float = Field(0.95, gt=0, le=1)
    scope: Literal["connection", "app"] = "connection"

    @property
    def _window(self) -> tuple[int, float]:
        """The provider's limit as (requests, seconds): per second, or one request per ``1 / per_second`` s."""
        seconds = max(1.0, 1.0 / self.per_second)
        return max(1, math.floor(self.per_second * seconds + 1e-9)), seconds

    @property
    def queue_per_second(self) -> float:
        """The rate the hub draws requests at (headroom × the published limit)."""
        requests, seconds = self._window
        return self.headroom * requests / seconds

    @property
    def interval(self) -> float:
        """Seconds between two requests drawn from one budget."""
        return 1.0 / self.queue_per_second

    @property
    def slack(self) -> float:
        """How late after its slot a request may leave and still keep every window of the provider's under the
        limit: ``1 / headroom - 1`` of the window (53 ms at 0.95 on a per-second limit)."""
        return (1.0 / self.headroom - 1.0) * self._window[1]


class RetrySpec(_Strict):
    """Which response header says when to retry after a 429, and in what format."""

    header: str = "Retry-After"
    format: Literal["seconds", "epoch", "http_date"] = "seconds"


class RefreshPolicy(_Strict):
    """Token refresh: does a refresh rotate the refresh token, and the longest gap between refreshes."""

    rotating: bool = False
    max_interval: Duration | None = None


class WebhookSpec(_Strict):
    """How the provider signs its webhooks (a scheme name implemented in connectors/signing.py)."""

    signing: str


class SyncModel(_Strict):
    """A model the provider offers for incremental sync (used by the sync jobs)."""

    name: str
    cursor: Literal["timestamp", "id", "page_token", "delta_link"]
    page_size: PositiveInt = 100
    interval: Duration = timedelta(hours=1)
    required_config: list[str] = []  # config keys a connection must set to be offered this model (e.g. its path)


class Endpoints(BaseModel):
    """A provider's URLs and scopes resolved for one connection."""

    authorization_url: str | None
    token_url: str | None
    base_url: str
    scopes: list[str]
    scope_separator: str

    @property
    def scope(self) -> str:
        """Scopes joined with the provider's separator."""
        return self.scope_separator.join(self.scopes)


class Provider(_Strict):
    """One catalogue entry."""

    key: str
    display_name: str
    docs: str | None = None
    auth_mode: AuthMode
    authorization_url: str | None = None
    token_url: str | None = None
    token_auth_method: Literal["client_secret_post", "client_secret_basic"] = "client_secret_basic"
    token_client: Literal["authlib", "msal", "docusign"] = "authlib"
    scopes: list[str] = []
    scope_separator: str = " "
    required_config: list[str] = []
    refresh: RefreshPolicy = RefreshPolicy()
    reauth_errors: list[str] = ["invalid_grant", "invalid_client", "unauthorized_client"]
    base_url: str | None = None
    rate_limit: RateLimit
    retry: RetrySpec = RetrySpec()
    webhook: WebhookSpec | None = None
    module: str | None = None
    actions_prefix: str | None = None
    actions: list[str] = []
    syncs: list[SyncModel] = []

    @model_validator(mode="after")
    def _consistent(self) -> Provider:
        configurable = set(self.required_config)
        for key in URL_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            missing = {f for _, f, _, _ in string.Formatter().parse(value) if f} - configurable
            if missing:
                raise ValueError(f"{key} uses {sorted(missing)} which are not in required_config")
        if self.base_url is None and "base_url" not in configurable:
            raise ValueError("base_url is required (or list it in required_config)")
        if self.auth_mode in TOKEN_MODES:
            if self.token_url is None and "token_url" not in configurable:
                raise ValueError(f"auth_mode {self.auth_mode} needs token_url")
            if "client_id" not in configurable and self.auth_mode != "oauth2_code_pkce":
                raise ValueError(f"auth_mode {self.auth_mode} needs client_id in required_config")
        if (self.auth_mode == "jwt_grant") != (self.token_client == "docusign"):
            raise ValueError("the JWT grant is implemented by token_client docusign (and only the JWT grant)")
        if self.token_client == "msal" and self.auth_mode != "client_credentials":
            raise ValueError("token_client msal implements auth_mode client_credentials only")
        if self.auth_mode == "oauth2_code_pkce" and self.authorization_url is None and (
            "authorization_url" not in configurable
        ):
            raise ValueError("auth_mode oauth2_code_pkce needs authorization_url")
        for name in self.actions:
            if not name.startswith(f"{self.action_prefix}."):
                raise ValueError(f"action {name!r} must be named '<prefix>.<action>'")
        if self.actions and not self.module:
            raise ValueError("actions are named but no module implements them")
        if len({s.name for s in self.syncs}) != len(self.syncs):
            raise ValueError("sync model names must be unique")
        return self

    @property
    def action_prefix(self) -> str:
        """The prefix of this provider's action names, which also names its task queue (e.g. ``sharepoint``)."""
        return self.actions_prefix or self.key

    @property
    def refreshes(self) -> bool:
        """Does a connection of this provider hold an expiring token the ConnectionWorkflow maintains?"""
        return self.auth_mode in TOKEN_MODES

    @property
    def required_credentials(self) -> tuple[str, ...]:
        """Secrets a new connection must supply."""
        return REQUIRED_CREDENTIALS[self.auth_mode]

    @property
    def allowed_credentials(self) -> tuple[str, ...]:
        """Secrets a new connection may supply."""
        return (
            *REQUIRED_CREDENTIALS[self.auth_mode],
            *OPTIONAL_CREDENTIALS.get(self.auth_mode, ()),
            "webhook_secrets",
        )

    def missing_config(self, config: dict) -> list[str]:
        """Required config keys the connection does not set."""
        needed = list(self.required_config)
        if self.auth_mode in TOKEN_MODES and "client_id" not in needed:
            needed.append("client_id")
        return [k for k in needed if not config.get(k)]

    def endpoints(self, config: dict) -> Endpoints:
        """URLs and scopes for one connection: config overrides, then ``{placeholders}`` from config."""
        values = _Placeholders({k: str(v) for k, v in config.items() if isinstance(v, str | int)})

        def resolve(key: str) -> str | None:
            template = config.get(key) or getattr(self, key)
            return None if template is None else template.format_map(values)

        scopes = config.get("scopes") or list(self.scopes)
        if isinstance(scopes, str):
            scopes = [s for s in re.split(r"[\s,]+", scopes) if s]
        return Endpoints(
            authorization_url=resolve("authorization_url"),
            token_url=resolve("token_url"),
            base_url=resolve("base_url") or "",
            scopes=scopes,
            scope_separator=self.scope_separator,
        )


class _Placeholders(dict):
    """Config values for URL templates; a placeholder without a value stays as it is (``{tenant_id}``)."""

    def __missing__(self, key: str) -> str:
        return f"{{{key}}}"


class Catalogue(BaseModel):
    """All providers, by key."""

    providers: dict[str, Provider]

    @model_validator(mode="after")
    def _unique_prefixes(self) -> Catalogue:
        seen: dict[str, str] = {}
        for entry in self.providers.values():
            if entry.action_prefix in seen:
                raise ValueError(f"{entry.key} and {seen[entry.action_prefix]} share action prefix "
                                 f"{entry.action_prefix!r}")
            seen[entry.action_prefix] = entry.key
        return self

    def get(self, key: str) -> Provider:
        """One provider; KeyError naming the known ones if absent."""
        try:
            return self.providers[key]
        except KeyError:
            raise KeyError(f"unknown provider {key!r}; known: {', '.join(sorted(self.providers))}") from None

    def for_action(self, action: str) -> Provider:
        """The provider whose actions include ``action`` (e.g. ``sharepoint.ensure_folders`` → microsoft)."""
        prefix = action.split(".", 1)[0]
        for entry in self.providers.values():
            if entry.action_prefix == prefix:
                return entry
        raise KeyError(f"no provider offers action {action!r}")

    def action_modules(self) -> list[str]:
        """Every module the catalogue names, once each."""
        return sorted({p.module for p in self.providers.values() if p.module})


def parse_catalogue(text: str) -> Catalogue:
    """Validate catalogue YAML; errors are pydantic ValidationErrors whose locations name provider and field."""
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ValueError("the catalogue must be a mapping of provider key → entry")
    return Catalogue.model_validate(
        {"providers": {key: {"key": key, **(entry or {})} for key, entry in raw.items()}}
    )


@lru_cache
def catalogue() -> Catalogue:
    """The catalogue shipped with the hub (parsed once)."""
    return parse_catalogue(CATALOGUE_PATH.read_text())


def provider(key: str) -> Provider:
    """One provider of the shipped catalogue."""
    return catalogue().get(key)


def import_action_modules() -> list[str]:
    """Import every action module the catalogue names that exists; returns those imported."""
    imported = []
    for name in catalogue().action_modules():
        if importlib.util.find_spec(name) is None:
            log.warning("catalogue names module %s, which does not exist (its actions are unavailable)", name)
            continue
        importlib.import_module(name)
        imported.append(name)
    return imported
