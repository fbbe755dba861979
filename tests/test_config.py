"""Settings.load: defaults, then a TOML file, then SPEARLET_* variables, then explicit overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from spearlet.config import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SPEARLET_* variable of the surrounding shell may leak into a test."""
    for name in list(os.environ):
        if name.upper().startswith("SPEARLET_"):
            monkeypatch.delenv(name)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spearlet.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = Settings.load()
    assert settings.host == "127.0.0.1"
    assert settings.grpc_port == 50052
    assert settings.http_port == 8081
    assert settings.data_dir == Path(".spearlet").resolve()  # absolute: functions run elsewhere
    assert settings.store == "sqlite"
    assert settings.run_as == "auto"
    assert settings.tasks == ""
    assert settings.max_concurrency == 16
    assert settings.max_pending == 1000
    assert settings.default_timeout_ms == 300_000
    assert settings.node_id == ""  # made once per data dir by the node (tests/node/test_identity.py)


def test_the_store_lives_under_the_data_dir() -> None:
    settings = Settings.load(data_dir=Path("/var/lib/spearlet"))
    assert settings.db_path == Path("/var/lib/spearlet/spearlet.db")


def test_an_unknown_store_is_refused() -> None:
    with pytest.raises(ValueError, match="redis://"):
        Settings.load(store="postgres://x")
    assert Settings.load(store="redis://127.0.0.1:6379/0").store.startswith("redis://")
    assert Settings.load(store="memory").store == "memory"


def test_toml_file_with_top_level_keys(tmp_path: Path) -> None:
    path = toml(tmp_path, 'host = "0.0.0.0"\ngrpc_port = 6000\ndata_dir = "/srv/spear"\nmax_concurrency = 4\n')
    settings = Settings.load(path)
    assert settings.host == "0.0.0.0"
    assert settings.grpc_port == 6000
    assert settings.data_dir == Path("/srv/spear")
    assert settings.max_concurrency == 4
    assert settings.http_port == 8081  # not in the file: the default


def test_toml_file_with_a_spearlet_table(tmp_path: Path) -> None:
    path = toml(tmp_path, '[spearlet]\nhost = "10.0.0.1"\nhttp_port = 9000\ntasks = "none"\n')
    settings = Settings.load(path)
    assert settings.host == "10.0.0.1"
    assert settings.http_port == 9000
    assert settings.tasks == "none"
    assert settings.grpc_port == 50052


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(tmp_path, "grpc_port = 6000\nhttp_port = 9000\n")
    monkeypatch.setenv("SPEARLET_GRPC_PORT", "7000")
    monkeypatch.setenv("SPEARLET_DATA_DIR", "/from/env")
    settings = Settings.load(path)
    assert settings.grpc_port == 7000
    assert settings.data_dir == Path("/from/env")
    assert settings.http_port == 9000  # the file still applies where the environment is silent


def test_environment_equal_to_the_default_still_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = toml(tmp_path, "grpc_port = 6000\n")
    monkeypatch.setenv("SPEARLET_GRPC_PORT", "50052")
    assert Settings.load(path).grpc_port == 50052


def test_environment_applies_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEARLET_HOST", "0.0.0.0")
    monkeypatch.setenv("SPEARLET_MAX_SYNC_WAIT_S", "2.5")
    settings = Settings.load()
    assert settings.host == "0.0.0.0"
    assert settings.max_sync_wait_s == 2.5


def test_explicit_overrides_win_over_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(tmp_path, 'host = "file"\ngrpc_port = 6000\n')
    monkeypatch.setenv("SPEARLET_HOST", "env")
    monkeypatch.setenv("SPEARLET_GRPC_PORT", "7000")
    settings = Settings.load(path, host="flag", grpc_port=8000)
    assert settings.host == "flag"
    assert settings.grpc_port == 8000


def test_none_overrides_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(tmp_path, 'host = "file"\n')
    monkeypatch.setenv("SPEARLET_GRPC_PORT", "7000")
    settings = Settings.load(path, host=None, grpc_port=None, http_port=None, data_dir=None)
    assert settings.host == "file"
    assert settings.grpc_port == 7000
    assert settings.http_port == 8081
    assert settings.data_dir == Path(".spearlet").resolve()


def test_zero_override_is_not_mistaken_for_none() -> None:
    assert Settings.load(grpc_port=0).grpc_port == 0


def test_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="grpc_prot"):
        Settings.load(toml(tmp_path, "grpc_prot = 6000\n"))


def test_unknown_key_in_the_spearlet_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="colour"):
        Settings.load(toml(tmp_path, '[spearlet]\nhost = "0.0.0.0"\ncolour = "blue"\n'))


def test_out_of_range_value_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="grpc_port"):
        Settings.load(toml(tmp_path, "grpc_port = 70000\n"))


def test_invalid_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEARLET_MAX_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="max_concurrency"):
        Settings.load()


def test_a_token_without_tls_beyond_loopback_is_warned_about(tmp_path: Path) -> None:
    exposed = Settings.load(host="0.0.0.0", token="t")
    assert "without TLS" in exposed.exposure_warning() and "--tls-cert" in exposed.exposure_warning()
    pem = tmp_path / "x.pem"
    assert Settings.load(host="0.0.0.0", token="t", tls_cert=pem, tls_key=pem).exposure_warning() == ""
    assert Settings.load(token="t").exposure_warning() == ""  # loopback


def test_tls_needs_both_certificate_and_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        Settings.load(tls_cert=tmp_path / "x.pem")


def test_sms_settings_come_from_the_file_the_environment_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('sms_grpc_addr = "10.0.0.5:50051"\ntrusted_networks = ["10.0.0.5/32"]\n')
    monkeypatch.setenv("SPEARLET_SMS_HTTP_ADDR", "10.0.0.5:8080")
    settings = Settings.load(config, sms_heartbeat_s=2.5, advertise_address="10.0.0.9")
    assert settings.sms_grpc_addr == "10.0.0.5:50051"
    assert settings.sms_http_addr == "10.0.0.5:8080"
    assert settings.trusted_networks == ["10.0.0.5/32"]
    assert (settings.sms_heartbeat_s, settings.advertise_address) == (2.5, "10.0.0.9")
    defaults = Settings()
    assert (defaults.sms_grpc_addr, defaults.sms_heartbeat_s, defaults.trusted_networks) == ("", 30.0, [])


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("trusted_networks", ["10.0.0.0/33"], "is not a CIDR network"),
        ("trusted_networks", ["sms.example"], "is not a CIDR network"),
        ("sms_grpc_addr", "10.0.0.5", "expected HOST:PORT"),
        ("sms_http_addr", "sms:http", "expected HOST:PORT"),
        ("advertise_address", "my-host", "must be an IP address"),
        ("sms_heartbeat_s", 0, "greater than 0"),
    ],
)
def test_malformed_sms_settings_are_refused_naming_the_setting(setting: str, value: object, said: str) -> None:
    with pytest.raises(ValidationError, match=said):
        Settings(**{setting: value})


def test_joining_an_sms_with_a_token_needs_the_sms_trusted_or_insecure() -> None:
    base = {"token": "t0ken", "sms_grpc_addr": "10.0.0.5:50051"}
    with pytest.raises(ValueError, match="add the SMS's address to trusted_networks"):
        Settings(**base).sms_exposure()
    with pytest.raises(ValueError, match="trusted_networks"):
        Settings(**base, trusted_networks=["10.0.1.0/24"]).sms_exposure()
    assert "trusted_networks covers it" in Settings(**base, trusted_networks=["10.0.0.0/24"]).sms_exposure()
    assert "insecure" in Settings(**base, insecure=True).sms_exposure()
    assert "no token" in Settings(sms_grpc_addr="10.0.0.5:50051").sms_exposure()
    assert Settings().sms_exposure() == ""
