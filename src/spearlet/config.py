"""Node settings: defaults, then a TOML file, then `SPEARLET_*` variables, then command-line flags."""

from __future__ import annotations

import ipaddress
import socket
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
    # Calls from these networks (CIDRs, e.g. "10.0.0.5/32") need no token. SPEAR's SMS calls nodes
    # without one, so a node that joins an SMS trusts the SMS's address: anyone who can send from
    # those addresses (or spoof them on the path) may then call the node freely.
    trusted_networks: list[str] = Field(default_factory=list)

    # Joining a SPEAR cluster (README "Joining a SPEAR cluster"): the SMS's gRPC and HTTP addresses
    # (HOST:PORT; empty gRPC: the node joins nothing), the IP the SMS should call the node back on
    # (empty: the bind address when it is not a wildcard, else the address of the default route),
    # and how often the node tells the SMS it lives (the SMS forgets nodes silent for 90 s).
    sms_grpc_addr: str = ""
    sms_http_addr: str = ""
    advertise_address: str = ""
    sms_heartbeat_s: float = Field(30.0, gt=0, le=85)

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

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"trusted_networks: {text!r} is not a CIDR network (e.g. 10.0.0.0/24)") from None
        return value

    @field_validator("sms_grpc_addr", "sms_http_addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            split_host_port(value)
        return value

    @field_validator("advertise_address")
    @classmethod
    def _ip(cls, value: str) -> str:
        if value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"advertise_address must be an IP address, got {value!r}") from None
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

    def sms_exposure(self) -> str:
        """How the SMS, which calls nodes without a token, may call this node: a line for the
        operator. ValueError when it could not (a token, and no trusted network covering the SMS,
        nor `insecure`). Empty without an SMS."""
        if not self.sms_grpc_addr:
            return ""
        host, _ = split_host_port(self.sms_grpc_addr)
        if not self.access_token():
            return f"the SMS at {self.sms_grpc_addr} calls this node freely: it has no token"
        addresses = resolve_host(host)
        networks = [ipaddress.ip_network(n, strict=False) for n in self.trusted_networks]
        if addresses and all(any(a in n for n in networks) for a in addresses):
            return f"the SMS at {self.sms_grpc_addr} calls this node without a token: trusted_networks covers it"
        if self.insecure:
            return f"the SMS at {self.sms_grpc_addr} is not in trusted_networks: insecure, but its calls need the token"
        raise ValueError(
            f"the SMS at {self.sms_grpc_addr} calls nodes without a token, and this node has one: add the SMS's "
            "address to trusted_networks (--trusted-network CIDR), or pass --insecure to join anyway"
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


def split_host_port(address: str) -> tuple[str, int]:
    """("host", port) of "HOST:PORT" or "[IPv6]:PORT"; ValueError naming what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)


def resolve_host(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses `host` names (itself when it is one); empty when it cannot be resolved."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}, key=str)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
