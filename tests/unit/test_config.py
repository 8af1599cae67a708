from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_openmrs.config import LogFormat, Viewer, load_settings
from orthanc_openmrs.demographics import Check
from orthanc_openmrs.errors import ConfigError

REQUIRED = {
    "ORTHANC_PUBLIC_URL": "https://pacs.example.org/",
    "OPENMRS_USER": "admin",
    "OPENMRS_PASSWORD": "Admin123",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [
        *REQUIRED,
        "SYNC_WORKERS",
        "EIP_FHIR_USERNAME",
        "EIP_FHIR_PASSWORD",
        "SYNC_VIEWER",
        "SYNC_VIEWER_URL",
        "SYNC_POLL_INTERVAL",
        "ORTHANC_URL",
        "SYNC_DEMOGRAPHIC_CHECKS",
        "SYNC_ISSUER_TYPES",
        "ORTHANC_PASSWORD",
        "ORTHANC_PASSWORD_FILE",
        "OPENMRS_PASSWORD_FILE",
        "SYNC_CA_BUNDLE",
        "SYNC_HTTP_ADDRESS",
        "SYNC_HTTP_PORT",
        "SYNC_LOG_FORMAT",
        "OAUTH_ENABLED",
        "OAUTH_ACCESS_TOKEN_URL",
        "OAUTH_CLIENT_ID",
        "OAUTH_CLIENT_SECRET",
        "OAUTH_CLIENT_SECRET_FILE",
        "OAUTH_CLIENT_SCOPE",
        "ORTHANC_TOKEN_HEADER",
        "ORTHANC_API_KEY",
        "ORTHANC_API_KEY_FILE",
        "ORTHANC_OAUTH_ACCESS_TOKEN_URL",
        "ORTHANC_OAUTH_CLIENT_ID",
        "ORTHANC_OAUTH_CLIENT_SECRET",
        "ORTHANC_OAUTH_CLIENT_SECRET_FILE",
    ]:
        monkeypatch.delenv(name, raising=False)


def _env(monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    for key, value in {**REQUIRED, **extra}.items():
        monkeypatch.setenv(key, value)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the required settings only, the documented defaults apply."""
    _env(monkeypatch)
    s = load_settings()
    assert s.orthanc_url == "http://localhost:8042"
    assert s.orthanc_public_url == "https://pacs.example.org"
    assert s.sync_viewer is Viewer.STONE
    assert s.patient_tags == ("PatientID", "OtherPatientIDs")
    assert s.sync_database == Path("orthanc-openmrs.sqlite3")
    assert s.sync_poll_interval <= 5


def test_missing_required_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each missing required setting is named by its variable, the OpenMRS login once the
    rest is valid (OAUTH_ENABLED makes it unneeded)."""
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "ORTHANC_PUBLIC_URL" in info.value.message
    monkeypatch.setenv("ORTHANC_PUBLIC_URL", "https://pacs.example.org")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "OPENMRS_USER: required but not set" in info.value.message
    monkeypatch.setenv("OPENMRS_USER", "admin")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "OPENMRS_PASSWORD: required but not set" in info.value.message


def test_oauth_needs_no_openmrs_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With OAUTH_ENABLED, Ozone's OAUTH_* variables replace the OpenMRS user and password, and
    the secret may come from a file."""
    monkeypatch.setenv("ORTHANC_PUBLIC_URL", "https://pacs.example.org")
    monkeypatch.setenv("OAUTH_ENABLED", "true")
    monkeypatch.setenv(
        "OAUTH_ACCESS_TOKEN_URL", "http://kc/realms/ozone/protocol/openid-connect/token"
    )
    monkeypatch.setenv("OAUTH_CLIENT_ID", "eip")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message == "OAUTH_CLIENT_SECRET: required when OAUTH_ENABLED is true"
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n", encoding="utf-8")
    monkeypatch.setenv("OAUTH_CLIENT_SECRET_FILE", str(secret))
    settings = load_settings()
    assert settings.oauth_client_secret.get_secret_value() == "s3cret"
    assert settings.openmrs_user == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ORTHANC_URL", "localhost:8042"),
        ("ORTHANC_PUBLIC_URL", "https://x/?a=1"),
        ("SYNC_WORKERS", "0"),
        ("SYNC_POLL_INTERVAL", "-1"),
        ("SYNC_VIEWER", "nope"),
        ("SYNC_PATIENT_TAGS", "PatientName"),
        ("SYNC_VIEWER_URL", "{public_url}/x"),
        ("OPENMRS_PASSWORD", "a:b"),
        ("SYNC_DEMOGRAPHIC_CHECKS", "birthdate,age"),
        ("SYNC_ISSUER_TYPES", "HOSP_A"),
        ("SYNC_ISSUER_TYPES", "HOSP_A=OpenMRS ID,HOSP_A=Legacy MRN"),
    ],
)
def test_invalid_setting_is_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """An invalid value stops start-up with a message naming the setting, never the value."""
    _env(monkeypatch, **{name: value})
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert name in info.value.message
    assert "Admin123" not in info.value.message


def test_demographic_checks_default_to_birthdate_and_sex(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default birth date and sex are checked, the family name is not; empty: none."""
    _env(monkeypatch)
    assert load_settings().demographic_checks == {Check.BIRTHDATE, Check.SEX}
    assert load_settings(sync_demographic_checks="").demographic_checks == frozenset()


def test_issuer_types_are_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """No issuer is mapped by default; the setting reads into issuer -> identifier type."""
    _env(monkeypatch)
    assert load_settings().issuer_types == {}
    s = load_settings(sync_issuer_types="HOSP_A=OpenMRS ID, CLINIC_B=Legacy MRN")
    assert s.issuer_types == {"HOSP_A": "OpenMRS ID", "CLINIC_B": "Legacy MRN"}


def test_custom_viewer_needs_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """SYNC_VIEWER=custom without SYNC_VIEWER_URL is refused."""
    _env(monkeypatch, SYNC_VIEWER="custom")
    with pytest.raises(ConfigError, match="SYNC_VIEWER_URL"):
        load_settings()


def test_ozone_credential_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ozone's EIP_FHIR_USERNAME/PASSWORD work in place of OPENMRS_USER/PASSWORD."""
    monkeypatch.setenv("ORTHANC_PUBLIC_URL", "http://p")
    monkeypatch.setenv("EIP_FHIR_USERNAME", "svc")
    monkeypatch.setenv("EIP_FHIR_PASSWORD", "pw")
    s = load_settings()
    assert s.openmrs_user == "svc"
    assert s.openmrs_password.get_secret_value() == "pw"


def test_precedence_flags_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Flags beat the environment, which beats the TOML file, which beats defaults."""
    config = tmp_path / "c.toml"
    config.write_text('sync_workers = 7\northanc_url = "http://file:1"\nsync_poll_interval = 2\n')
    _env(monkeypatch, SYNC_POLL_INTERVAL="3")
    s = load_settings(config, sync_workers=5)
    assert (s.sync_workers, s.orthanc_url, s.sync_poll_interval) == (5, "http://file:1", 3)


def test_unknown_key_in_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A misspelt key in the TOML file is an error naming it."""
    config = tmp_path / "c.toml"
    config.write_text("sync_wrokers = 2\n")
    _env(monkeypatch)
    with pytest.raises(ConfigError, match="sync_wrokers"):
        load_settings(config)


def test_unreadable_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A missing or broken TOML file is reported against --config."""
    _env(monkeypatch)
    with pytest.raises(ConfigError, match="--config"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("= nope")
    with pytest.raises(ConfigError, match="--config"):
        load_settings(bad)


def test_production_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unless told otherwise: the HTTP surface on loopback port 8090, logs in JSON unless on a
    terminal, the public CAs, passwords from the environment."""
    _env(monkeypatch)
    s = load_settings()
    assert (s.sync_http_address, s.sync_http_port) == ("127.0.0.1", 8090)
    assert s.sync_log_format is LogFormat.AUTO
    assert s.sync_ca_bundle is None
    assert s.openmrs_password_file is None
    assert s.openmrs_password.get_secret_value() == "Admin123"


def test_passwords_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """*_PASSWORD_FILE gives the password (its final newline dropped), as Docker secrets and
    systemd credentials do; the OpenMRS password from a file is checked like any other."""
    _env(monkeypatch)
    monkeypatch.delenv("OPENMRS_PASSWORD")
    (tmp_path / "openmrs").write_text("from-a-file\n")
    (tmp_path / "orthanc").write_text("orthanc-secret")
    monkeypatch.setenv("OPENMRS_PASSWORD_FILE", str(tmp_path / "openmrs"))
    monkeypatch.setenv("ORTHANC_PASSWORD_FILE", str(tmp_path / "orthanc"))
    s = load_settings()
    assert s.openmrs_password.get_secret_value() == "from-a-file"
    assert s.orthanc_password.get_secret_value() == "orthanc-secret"
    (tmp_path / "openmrs").write_text("with:colon\n")
    with pytest.raises(ConfigError, match="OPENMRS_PASSWORD: must not contain ':'"):
        load_settings()


def test_password_file_problems_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A password given twice, or a file that cannot be read, stops the start naming it; the
    password itself never shows."""
    _env(monkeypatch)
    (tmp_path / "pw").write_text("other")
    monkeypatch.setenv("OPENMRS_PASSWORD_FILE", str(tmp_path / "pw"))
    with pytest.raises(ConfigError, match="set it or OPENMRS_PASSWORD_FILE, not both") as info:
        load_settings()
    assert "Admin123" not in info.value.message
    monkeypatch.delenv("OPENMRS_PASSWORD")
    monkeypatch.setenv("OPENMRS_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="OPENMRS_PASSWORD_FILE: cannot read"):
        load_settings()


def test_ca_bundle_must_be_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SYNC_CA_BUNDLE names a file that exists, or the start stops."""
    _env(monkeypatch, SYNC_CA_BUNDLE=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"SYNC_CA_BUNDLE: .* is not a readable file"):
        load_settings()


def test_orthanc_token_settings_go_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A token header needs exactly one of a key and a token URL, and a key needs the header."""
    _env(monkeypatch, ORTHANC_API_KEY="k")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith("ORTHANC_TOKEN_HEADER: required with ORTHANC_API_KEY")
    monkeypatch.setenv("ORTHANC_TOKEN_HEADER", "token")
    monkeypatch.setenv("ORTHANC_OAUTH_ACCESS_TOKEN_URL", "http://kc/realms/o/protocol/x/token")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "exactly one of ORTHANC_API_KEY and ORTHANC_OAUTH_ACCESS_TOKEN_URL" in info.value.message
    monkeypatch.delenv("ORTHANC_API_KEY")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith("ORTHANC_OAUTH_CLIENT_ID: required")
    monkeypatch.delenv("ORTHANC_OAUTH_ACCESS_TOKEN_URL")
    key = tmp_path / "key"
    key.write_text("from-file\n", encoding="utf-8")
    monkeypatch.setenv("ORTHANC_API_KEY_FILE", str(key))
    assert load_settings().orthanc_api_key.get_secret_value() == "from-file"


def test_orthanc_client_secret_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Orthanc's own OAuth2 client secret may come from a file (a Docker secret), as
    OAUTH_CLIENT_SECRET_FILE does for OpenMRS's; an unreadable one is named."""
    _env(
        monkeypatch,
        ORTHANC_TOKEN_HEADER="Authorization",
        ORTHANC_OAUTH_ACCESS_TOKEN_URL="http://kc/realms/o/protocol/openid-connect/token",
        ORTHANC_OAUTH_CLIENT_ID="orthanc-sync",
        ORTHANC_OAUTH_CLIENT_SECRET_FILE=str(tmp_path / "missing"),
    )
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith("ORTHANC_OAUTH_CLIENT_SECRET_FILE: cannot read it")
    secret = tmp_path / "secret"
    secret.write_text("from-file\n", encoding="utf-8")
    monkeypatch.setenv("ORTHANC_OAUTH_CLIENT_SECRET_FILE", str(secret))
    assert load_settings().orthanc_oauth_client_secret.get_secret_value() == "from-file"
