"""Node settings: defaults, then a TOML file, then `SPEARLET_*` variables, then command-line flags."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPEARLET_", extra="forbid")

    host: str = "127.0.0.1"
    grpc_port: int = Field(50052, ge=0, le=65535)
    http_port: int = Field(8081, ge=0, le=65535)
    data_dir: Path = Path(".spearlet")
    # Tasks registered at start; empty means the bundled examples, "none" means no tasks.
    tasks: str = ""
    node_id: str = Field(default_factory=socket.gethostname)
    # Prefix for status endpoints, e.g. "https://spear.example.com"; empty gives relative paths.
    public_url: str = ""

    max_concurrency: int = Field(16, ge=1)
    max_pending: int = Field(1000, ge=1)
    max_sync_wait_s: float = Field(60.0, gt=0)

    # Per-call limits; a task may lower or raise them in its metadata.
    default_timeout_ms: int = Field(300_000, ge=1)
    memory_limit_mb: int = Field(512, ge=0)
    cpu_limit_s: int = Field(0, ge=0)
    # Under gRPC clients' default 4 MiB receive limit, with room for the envelope.
    output_limit_bytes: int = Field(4_000_000, ge=1)
    log_limit_bytes: int = Field(64 << 10, ge=1024)
    file_limit_mb: int = Field(1024, ge=0)
    open_files: int = Field(1024, ge=0)
    max_retries_cap: int = Field(10, ge=0)

    # Where completion callbacks may go: host names, IP addresses or CIDR networks ("*" for anywhere).
    callback_allow: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1", "localhost"])

    # Terminal execution records are kept this long, and at most this many.
    retention_hours: float = Field(24.0, gt=0)
    retention_max_records: int = Field(100_000, ge=1)
    retention_interval_s: float = Field(60.0, gt=0)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Settings from `config_file` (TOML, top-level keys or a [spearlet] table), the environment
        and `overrides` (None values are ignored), later sources winning."""
        values: dict[str, Any] = {}
        if config_file is not None:
            with config_file.open("rb") as f:
                data = tomllib.load(f)
            values.update(data.get("spearlet", data))
        env_values = cls().model_dump(exclude_unset=True)
        values.update(env_values)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "spearlet.db"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "artifacts"
