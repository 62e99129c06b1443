"""Settings from HERALD_* environment variables, validated once at start.

`load_settings()` turns a validation error into `SettingsError` whose message names each
variable and what is wrong with it, so `herald` can print one clear line per problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    pass


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///var/herald.db",
        description="sqlite:///path/to/file.db (embedded) or postgresql://user@host/db",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    base_url: str = Field(default="", description="public URL, for links; default http://host:port")
    secret_key_file: Path = Field(
        default=Path("var/secret.key"),
        description="where the embedded mode keeps its generated master key",
    )
    secret_key: str = Field(default="", description="master key for secrets at rest and HMACs")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False

    data_dir: Path | None = Field(default=None, description="where CSV uploads wait for their import; "
                                   "default: the SQLite database's directory, else var/")

    # email
    inbound_domain: str = Field(
        default="", description="the domain whose MX points at `herald inbound-smtp`: bounces return to "
                                "bounce+<message id>@ it and mailto unsubscribes go to unsubscribe+<token>@ it; "
                                "default: the sending domain")
    inbound_smtp_port: int = Field(default=2525, ge=1, le=65535)
    dns_nameservers: list[str] = Field(
        default_factory=list, description='DNS servers for sending-domain checks, e.g. ["127.0.0.1:5353"]; '
                                          "default: the system resolver")

    # API
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1024, description="CSV uploads (POST /api/v1/imports)")
    idempotency_ttl_hours: int = Field(default=24, ge=24)
    idempotency_lock_seconds: int = Field(default=60, ge=1)

    # work engine
    worker_concurrency: int = Field(default=100, ge=1, le=10_000)
    worker_batch_size: int = Field(default=100, ge=1, le=10_000)
    worker_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    job_lease_seconds: float = Field(default=60.0, ge=1)
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    completed_job_retention_hours: int = Field(default=24, ge=0)
    redis_url: str = Field(default="", description="redis://host:6379/0 (or rediss://): shares providers' rate-limit "
                                                    "buckets between processes; default: each process has its own")

    # SQLite only: FULL makes every commit durable against power loss (G1); NORMAL is
    # faster and still safe against process crashes.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError(
                "must start with sqlite:/// (embedded) or postgresql:// (production), "
                f"got {value.split(':', 1)[0]!r}"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "redis+unix://")):
            raise ValueError(f"must start with redis://, rediss:// or redis+unix://, got {value.split(':', 1)[0]!r}")
        return value

    @property
    def public_base_url(self) -> str:
        return self.base_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite:")


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "HERALD_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
