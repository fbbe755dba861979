"""Node settings: defaults, then a TOML file, then `SPEARLET_*` variables, then command-line flags."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The stores a node can use, by name or URL scheme: node/tables.py has a row for each.
STORE_NAMES = ("sqlite", "memory")
STORE_URL_SCHEMES = ("redis", "rediss", "unix")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPEARLET_", extra="forbid")

    host: str = "127.0.0.1"
    # With a token (or a file holding one), every gRPC and HTTP call needs `Authorization: Bearer <token>`.
    token: SecretStr = SecretStr("")
    token_file: Path | None = None
    # Serve a non-loopback address without a token anyway.
    insecure: bool = False
    # PEM certificate (chain) and private key: gRPC and the HTTP gateway then speak TLS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    grpc_port: int = Field(50052, ge=0, le=65535)
    http_port: int = Field(8081, ge=0, le=65535)
    data_dir: Path = Path(".spearlet")
    # Tasks registered at start; empty means the bundled examples, "none" means no tasks.
    tasks: str = ""
    # Empty: made once per data dir (the host name and a short random suffix) and kept in it.
    node_id: str = ""
    # "sqlite" (embedded, the default), "memory" (not durable: tests and demos) or
    # "redis://HOST:PORT/DB" (cluster mode: nodes share work).
    store: str = "sqlite"
    # Cluster mode: how long a node's claim on running work lasts without renewal.
    lease_s: float = Field(5.0, gt=0)
    # Prefix for status endpoints, e.g. "https://spear.example.com"; empty gives relative paths.
    public_url: str = ""

    # The shortest interval between keepalive pings the gRPC server accepts from a client, with or
    # without calls in flight; a client that pings faster is cut off ("too_many_pings").
    grpc_min_ping_interval_ms: int = Field(1000, ge=0)

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
    # Processes the function user may have at once (binding when functions run as `run_as`).
    max_processes: int = Field(256, ge=0)

    # Who functions run as: "auto" is `nobody` when the node runs as root (else the node's user),
    # "none" the node's user, or an account name.
    run_as: str = "auto"
    # Interpreter of python workers; empty: the node's own, or /usr/bin/python3 when the function
    # user cannot run the node's.
    python_executable: str = ""
    # Where files functions use live (artifact copies, the worker program) when the sandbox is off and
    # functions run as another user; empty: the data dir if that user can reach it, else
    # /var/lib/spearlet/<id>.
    shared_dir: Path | None = None
    # Functions and Python workers in a bubblewrap sandbox: "auto" when bwrap and namespaces work
    # (said once at start when not), "required" refuses to start without it, "off".
    sandbox: Literal["auto", "required", "off"] = "auto"
    # A function's network: "host" (the node's) or "none" (loopback of its own); a task's metadata
    # `network` chooses for it. "none" needs the sandbox.
    network: Literal["host", "none"] = "host"

    # Artifacts: allowed URL schemes ("file" covers plain paths), local directories (empty: any),
    # hosts downloads may reach (names, addresses, CIDR networks; "*": any), and whether every
    # artifact must name its sha256 checksum; how large one may be and how long reading it may take.
    artifact_schemes: list[str] = Field(default_factory=lambda: ["file", "http", "https"])
    artifact_dirs: list[Path] = Field(default_factory=list)
    artifact_hosts: list[str] = Field(default_factory=lambda: ["*"])
    require_checksum: bool = False
    artifact_limit_mb: int = Field(256, ge=1)
    artifact_timeout_s: float = Field(60.0, gt=0)
    # Cluster mode: the largest artifact read from a node's disk that is shared through Redis
    # (larger ones must come from an http(s) location, which every node fetches itself).
    artifact_blob_limit_mb: int = Field(64, ge=1)
    # WASM modules compile one at a time, each within this memory and time.
    wasm_compile_memory_mb: int = Field(1024, ge=64)
    wasm_compile_timeout_s: float = Field(60.0, gt=0)

    # What one call may carry: parameters (how many, bytes in all), invocation_metadata and
    # context.environment (bytes of keys and values; task metadata too).
    max_parameters: int = Field(256, ge=1)
    max_parameters_bytes: int = Field(4 << 20, ge=1)
    max_metadata_bytes: int = Field(64 << 10, ge=0)
    max_environment_bytes: int = Field(64 << 10, ge=0)
    # A listing page holds at most this many bytes of records (and at most `limit` of them).
    max_page_bytes: int = Field(1 << 20, ge=1024)
    # Streams and watches open at once, gRPC and HTTP together; beyond it RESOURCE_EXHAUSTED (429).
    max_streams: int = Field(1000, ge=1)
    # Function names per task with their own label in the metrics (others share "_other").
    metrics_max_functions: int = Field(20, ge=0)

    # Where completion callbacks may go: host names, IP addresses or CIDR networks ("*" for anywhere),
    # and how long one delivery attempt may take in all.
    callback_allow: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1", "localhost"])
    callback_timeout_s: float = Field(10.0, gt=0)

    # Terminal execution records are kept this long, and at most this many.
    retention_hours: float = Field(24.0, gt=0)
    retention_max_records: int = Field(100_000, ge=1)
    retention_interval_s: float = Field(60.0, gt=0)

    # The settings file the node was started with: hidden from functions like the token file.
    _config_file: Path | None = PrivateAttr(None)

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value not in STORE_NAMES and not value.startswith(tuple(f"{s}://" for s in STORE_URL_SCHEMES)):
            raise ValueError(f"store must be 'sqlite', 'memory' or a redis:// URL, got {value!r}")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Functions run in their own working directories: every path the node hands them is absolute.
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (or neither)")
        return self

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
        settings = cls(**values)
        settings._config_file = config_file.resolve() if config_file is not None else None
        return settings

    def access_token(self) -> str:
        """The token from `token` or `token_file` (empty: no access control)."""
        if self.token.get_secret_value():
            return self.token.get_secret_value()
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return ""

    def check_exposure(self) -> None:
        """Refuse to serve beyond loopback without a token, unless told `insecure`."""
        if is_loopback(self.host) or self.insecure or self.access_token():
            return
        raise ValueError(
            f"refusing to serve on {self.host!r} without a token: set --token or --token-file, "
            "or pass --insecure to serve an open node on the network"
        )

    def exposure_warning(self) -> str:
        """What to tell the operator of a node whose token would cross the network in clear."""
        if is_loopback(self.host) or self.tls_cert is not None or not self.access_token():
            return ""
        return (
            f"serving on {self.host} with a token but without TLS: the token crosses the network in clear; "
            "set tls_cert and tls_key (--tls-cert, --tls-key)"
        )

    def tls_pair(self) -> tuple[bytes, bytes] | None:
        """(certificate chain, private key) as PEM bytes, or None without TLS."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return self.tls_cert.read_bytes(), self.tls_key.read_bytes()

    @property
    def config_file(self) -> Path | None:
        return self._config_file

    @property
    def db_path(self) -> Path:
        return self.data_dir / "spearlet.db"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
