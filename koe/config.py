"""Koe's deployment settings: one typed model, read from the environment or Streamlit secrets.

The engine never imports streamlit: the UI passes `load_config` a lookup (environment first, then
`.streamlit/secrets.toml`). Every value is validated here, so a typo in a limit is one clear message
at startup rather than a failure mid-call. Secret values are `SecretStr` (masked in reprs) and
errors never echo an input (`hide_input_in_errors`), so a malformed secret is not printed either.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from koe.access import AccessConfig
from koe.client import OPENAI_BASE_URL
from koe.ice import IceConfig
from koe.limits import Limits

__all__ = ["BackendConfig", "Config", "ConfigError", "ProviderKeys", "load_config"]

Lookup = Callable[[str], Any]
M = TypeVar("M", bound=BaseModel)


class BackendConfig(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, hide_input_in_errors=True)

    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    # The openai SDK's own name: a proxy or any OpenAI-compatible Realtime server.
    openai_base_url: str = Field(OPENAI_BASE_URL, pattern=r"^https?://", validation_alias="OPENAI_BASE_URL")
    # A `python -m koe.local` on another machine, used instead of the embedded one.
    local_url: str | None = Field(None, pattern=r"^https?://", validation_alias="KOE_LOCAL_URL")
    local_api_key: SecretStr | None = Field(None, validation_alias="KOE_LOCAL_API_KEY")
    data_dir: Path = Field(Path("data"), validation_alias="KOE_DATA_DIR")
    # History, visitors and the limits' counters in PostgreSQL (postgresql://user:password@host/db), shared
    # by several app servers; else SQLite in data_dir. A secret: the URL may hold a password.
    database_url: SecretStr | None = Field(None, validation_alias="KOE_DATABASE_URL")
    # The embedded local backend's replies from any OpenAI-compatible chat endpoint (vLLM, Ollama...).
    chat_base_url: str | None = Field(None, pattern=r"^https?://", validation_alias="KOE_CHAT_BASE_URL")
    chat_model: str | None = Field(None, validation_alias="KOE_CHAT_MODEL")
    chat_api_key: SecretStr | None = Field(None, validation_alias="KOE_CHAT_API_KEY")
    # Function tools: your own modules (`@koe.tools.tool` functions) and how long one call may run.
    tools_dir: Path | None = Field(None, validation_alias="KOE_TOOLS_DIR")
    tool_timeout_s: float = Field(10.0, gt=0, le=120, validation_alias="KOE_TOOL_TIMEOUT_S")

    @field_validator("database_url")
    @classmethod
    def _postgresql(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not re.match(r"postgres(ql)?(\+psycopg)?://", url.get_secret_value()):
            raise ValueError("must be a postgresql:// URL (without it, Koe uses SQLite in KOE_DATA_DIR)")
        return url


class ProviderKeys(BaseModel):
    """Hosted TURN providers (streamlit-webrtc's helpers mint short-lived credentials from them)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, hide_input_in_errors=True)

    twilio_account_sid: str | None = Field(None, validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr | None = Field(None, validation_alias="TWILIO_AUTH_TOKEN")
    cloudflare_turn_key_id: str | None = Field(None, validation_alias="CLOUDFLARE_TURN_KEY_ID")
    cloudflare_turn_key_api_token: SecretStr | None = Field(None, validation_alias="CLOUDFLARE_TURN_KEY_API_TOKEN")
    hf_token: SecretStr | None = Field(None, validation_alias="HF_TOKEN")


class Config(BaseModel):
    model_config = ConfigDict(frozen=True)

    backend: BackendConfig = BackendConfig()
    access: AccessConfig = AccessConfig()
    limits: Limits = Limits()
    ice: IceConfig = IceConfig()
    providers: ProviderKeys = ProviderKeys()


class ConfigError(ValueError):
    """A setting has a value Koe cannot use; the message names the setting, never its value."""


def _section(model: type[M], lookup: Lookup) -> M:
    names = [field.validation_alias for field in model.model_fields.values()]
    raw = {name: value for name in names if (value := lookup(name)) not in (None, "")}
    return model.model_validate(raw)


def load_config(lookup: Lookup) -> Config:
    """Read every setting through `lookup(NAME)` (None or "" = unset)."""
    try:
        return Config(**{name: _section(field.annotation, lookup) for name, field in Config.model_fields.items()})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Koe's settings are not valid: {problems}") from None
