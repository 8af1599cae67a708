"""Typed settings: flags > environment > TOML file (`--config`) > defaults, checked at start-up.

Every setting has one name, which is its environment variable; the TOML file uses the same names
in lower case (`orthanc_public_url = "https://pacs.example.org"`).
"""

from __future__ import annotations

import enum
import string
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orthanc_openmrs.demographics import Check, parse_checks
from orthanc_openmrs.errors import ConfigError
from orthanc_openmrs.ledger.location import LedgerLocation, PostgresURL, parse_location
from orthanc_openmrs.matching import parse_issuer_types

# Orthanc keeps these patient tags in its index; any other tag would cost a read of every file.
MATCHABLE_TAGS = ("PatientID", "OtherPatientIDs")
TEMPLATE_FIELDS = frozenset({"public_url", "study_uid", "orthanc_id"})


# Each password that may come from a file instead, with the names it may be given under.
_PASSWORDS = {
    "orthanc_password": ("orthanc_password",),
    "openmrs_password": ("openmrs_password", "eip_fhir_password"),
    "sync_web_secret": ("sync_web_secret",),
}

# The --config file's values, for the lowest-priority settings source while Settings is built.
_FILE_VALUES: ContextVar[dict[str, Any]] = ContextVar("file_values", default={})  # noqa: B039


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _FILE_VALUES.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get())


class Viewer(enum.StrEnum):
    STONE = "stone"
    OHIF = "ohif"
    EXPLORER2 = "explorer2"
    EXPLORER = "explorer"
    CUSTOM = "custom"


class PatientLookup(enum.StrEnum):
    REST = "rest"
    FHIR = "fhir"


class LogFormat(enum.StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class Settings(BaseSettings):
    """All settings of the service. Field name = environment variable (upper case)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="forbid", populate_by_name=True)

    orthanc_url: str = Field("http://localhost:8042", description="Orthanc REST base URL")
    orthanc_user: str = Field("", description="Orthanc user (empty: no authentication)")
    orthanc_password: SecretStr = Field(SecretStr(""), description="Orthanc password")
    orthanc_token_header: str = Field(
        "",
        description="Header carrying a token to Orthanc's authorization plugin (its "
        "TokenHttpHeaders): token, or Authorization for Bearer (empty: Basic)",
    )
    orthanc_api_key: SecretStr = Field(
        SecretStr(""), description="Static API key sent in ORTHANC_TOKEN_HEADER"
    )
    orthanc_api_key_file: Path | None = Field(
        None, description="File holding the Orthanc API key (instead of ORTHANC_API_KEY)"
    )
    orthanc_oauth_access_token_url: str = Field(
        "", description="Token URL of the OAuth2 client for Orthanc (instead of an API key)"
    )
    orthanc_oauth_client_id: str = Field("", description="OAuth2 client id for Orthanc")
    orthanc_oauth_client_secret: SecretStr = Field(
        SecretStr(""), description="OAuth2 client secret for Orthanc"
    )
    orthanc_oauth_client_secret_file: Path | None = Field(
        None,
        description="File holding Orthanc's OAuth2 client secret (instead of "
        "ORTHANC_OAUTH_CLIENT_SECRET)",
    )
    orthanc_oauth_client_scope: str = Field("", description="OAuth2 scope for Orthanc's token")
    orthanc_public_url: str = Field(
        description="Base of the viewer link in captions, as clinicians reach Orthanc"
    )
    openmrs_url: str = Field(
        "http://localhost:8080/openmrs", description="OpenMRS base URL, with its context path"
    )
    openmrs_user: str = Field(
        "",
        validation_alias=AliasChoices("openmrs_user", "eip_fhir_username"),
        description="OpenMRS user (Ozone's EIP_FHIR_USERNAME is read too); required unless "
        "OAUTH_ENABLED",
    )
    openmrs_password: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("openmrs_password", "eip_fhir_password"),
        description="OpenMRS password (Ozone's EIP_FHIR_PASSWORD is read too)",
    )
    oauth_enabled: bool = Field(
        False, description="OpenMRS behind single sign-on: OAuth2 client-credentials tokens"
    )
    oauth_access_token_url: str = Field(
        "", description="Token URL: {keycloak}/realms/{realm}/protocol/openid-connect/token"
    )
    oauth_client_id: str = Field("", description="OAuth2 client id (its service account)")
    oauth_client_secret: SecretStr = Field(SecretStr(""), description="OAuth2 client secret")
    oauth_client_secret_file: Path | None = Field(
        None, description="File holding the OAuth2 client secret (instead of OAUTH_CLIENT_SECRET)"
    )
    oauth_client_scope: str = Field("", description="OAuth2 scope asked for (empty: none)")
    sync_database: Annotated[LedgerLocation, PlainValidator(parse_location)] = Field(
        Path("orthanc-openmrs.sqlite3"),
        description="The ledger: a SQLite file, or a postgresql://user@host:port/database URL "
        "(for several instances)",
    )
    sync_database_password_file: Path | None = Field(
        None,
        description="File holding the PostgreSQL ledger's password (instead of in SYNC_DATABASE)",
    )
    sync_viewer: Viewer = Field(
        Viewer.STONE,
        description="Viewer of the caption link: stone, ohif, explorer2, explorer, custom",
    )
    sync_viewer_url: str = Field(
        "",
        description="Link template for sync_viewer=custom, with {public_url}, {study_uid}, "
        "{orthanc_id}",
    )
    sync_patient_tags: str = Field(
        "PatientID,OtherPatientIDs",
        description="DICOM tags holding the OpenMRS identifier, in order",
    )
    sync_identifier_types: str = Field(
        "", description="OpenMRS identifier types that count, by name or uuid (empty: all)"
    )
    sync_issuer_types: str = Field(
        "",
        description="ISSUER=identifier type pairs, comma-separated (HOSP_A=OpenMRS ID): an "
        "identifier from a listed IssuerOfPatientID counts only with that type (empty: off)",
    )
    sync_demographic_checks: str = Field(
        "birthdate,sex",
        description="What must not contradict OpenMRS before attaching: birthdate, sex, "
        "family_name, comma-separated (empty: no check)",
    )
    sync_patient_lookup: PatientLookup = Field(
        PatientLookup.REST,
        description="rest (fuzzy search, filtered exactly here) or fhir (exact search)",
    )
    sync_poll_interval: float = Field(5.0, gt=0, le=300, description="Seconds between polls in run")
    sync_preview_max_side: int = Field(
        1024, ge=64, le=8192, description="Longest side of the preview image, in pixels"
    )
    sync_preview_max_bytes: int = Field(
        1_000_000,
        ge=20_000,
        le=5_242_880,
        description="Largest preview file; OpenMRS down-scales images over 1,200,000 bytes",
    )
    sync_http_timeout: float = Field(30.0, gt=0, le=600, description="HTTP timeout in seconds")
    sync_workers: int = Field(8, ge=1, le=64, description="Studies in flight at once")
    sync_retry_min: float = Field(
        60.0, ge=0, description="First retry delay (seconds) of a study that could not sync"
    )
    sync_retry_max: float = Field(3600.0, ge=0, description="Longest retry delay (seconds)")
    sync_rate_limit: float = Field(
        0.0, ge=0, description="Most uploads per second to OpenMRS (0: no limit)"
    )
    sync_reconcile_interval: float = Field(
        600.0, gt=0, description="Seconds between reconciliation sweeps in run"
    )
    sync_keep_deleted: bool = Field(
        False, description="Keep the attachment of a study deleted from Orthanc (default: void it)"
    )
    # -- running it in production: secrets from files, TLS, the HTTP surface, logs ----------
    orthanc_password_file: Path | None = Field(
        None, description="File holding the Orthanc password (Docker secrets, systemd credentials)"
    )
    openmrs_password_file: Path | None = Field(
        None, description="File holding the OpenMRS password (Docker secrets, systemd credentials)"
    )
    sync_ca_bundle: Path | None = Field(
        None,
        description="PEM file of the CAs trusted for both servers, instead of the public ones "
        "(an internal CA)",
    )
    sync_http_address: str = Field(
        "127.0.0.1", description="Address of run's HTTP surface (/health, /ready, /metrics)"
    )
    sync_http_port: int = Field(
        8090, ge=0, le=65535, description="Port of run's HTTP surface (0: none)"
    )
    sync_log_format: LogFormat = Field(
        LogFormat.AUTO,
        description="Log lines: json (one object a line), console, or auto (json unless on a "
        "terminal)",
    )
    sync_study_cards: bool = Field(
        True,
        description="Attach a card naming the study when it has no image to show (false: list "
        "such studies with their reason instead)",
    )

    # -- the review pages ------------------------------------------------------------------
    sync_web: bool = Field(
        True,
        description="Serve the review pages under /review/ on run's HTTP surface (people sign "
        "in with their OpenMRS accounts)",
    )
    sync_web_secret: SecretStr = Field(
        SecretStr(""),
        description="Key signing the review pages' session cookies, 32 characters at least "
        "(empty: one is made and kept in the ledger, shared by every process on it)",
    )
    sync_web_secret_file: Path | None = Field(
        None, description="File holding SYNC_WEB_SECRET instead (Docker secrets)"
    )
    sync_web_session_hours: float = Field(
        8.0, gt=0, le=24 * 30, description="Hours a sign-in to the review pages lasts"
    )
    sync_web_secure_cookie: bool = Field(
        False,
        description="Mark the session cookie Secure (set it when the pages are reached over "
        "HTTPS, as behind a TLS proxy)",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags, then the environment, then the --config file; no .env or secrets directory.
        return (init_settings, env_settings, _FileSource(settings_cls))

    @field_validator("orthanc_url", "openmrs_url", "orthanc_public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("http://", "https://")) or len(value) < len("http://x"):
            raise ValueError("must be an http:// or https:// URL")
        if any(c in value for c in "?# \r\n"):
            raise ValueError("must be a base URL without spaces, query or fragment")
        return value.rstrip("/")

    @field_validator("openmrs_password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if ":" in secret:
            # OpenMRS splits Basic credentials on every ':' and would see a shorter password.
            raise ValueError("must not contain ':' (OpenMRS cuts Basic passwords at the colon)")
        return value

    @field_validator("sync_web_secret")
    @classmethod
    def _web_secret(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if secret and len(secret) < 32:
            raise ValueError("must be 32 characters at least (or empty: one is made)")
        return value

    @field_validator("sync_ca_bundle")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        # A password may come from a file instead (the *_FILE convention of Docker secrets and
        # systemd credentials), never from both: which one wins would be a guess. Read before
        # the fields are checked, so the password from a file is checked as any other.
        if not isinstance(data, dict):
            return data
        for name, aliases in _PASSWORDS.items():
            path = data.get(f"{name}_file")
            if path in (None, ""):
                continue
            if any(data.get(alias) not in (None, "") for alias in aliases):
                raise ValueError(f"{name.upper()}: set it or {name.upper()}_FILE, not both")
            data = {**data, name: _read_secret(Path(path), name)}
        return data

    @field_validator("sync_patient_tags")
    @classmethod
    def _tags(cls, value: str) -> str:
        tags = [t.strip() for t in value.split(",") if t.strip()]
        if not tags:
            raise ValueError("must name at least one tag")
        unknown = [t for t in tags if t not in MATCHABLE_TAGS]
        if unknown:
            raise ValueError(f"unsupported tag(s) {unknown}; choose from {list(MATCHABLE_TAGS)}")
        return ",".join(tags)

    @field_validator("sync_issuer_types")
    @classmethod
    def _issuers(cls, value: str) -> str:
        parse_issuer_types(value)
        return value

    @field_validator("sync_demographic_checks")
    @classmethod
    def _checks(cls, value: str) -> str:
        parse_checks(value)
        return value

    @field_validator("sync_viewer_url")
    @classmethod
    def _template(cls, value: str) -> str:
        if not value:
            return value
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        if not fields <= TEMPLATE_FIELDS:
            raise ValueError(f"unknown placeholder(s) {sorted(fields - TEMPLATE_FIELDS)}")
        if not fields & {"study_uid", "orthanc_id"}:
            raise ValueError("must contain {study_uid} or {orthanc_id}")
        return value

    @property
    def patient_tags(self) -> tuple[str, ...]:
        return tuple(self.sync_patient_tags.split(","))

    @property
    def identifier_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.sync_identifier_types.split(",") if t.strip())

    @property
    def issuer_types(self) -> dict[str, str]:
        return parse_issuer_types(self.sync_issuer_types)

    @property
    def demographic_checks(self) -> frozenset[Check]:
        return parse_checks(self.sync_demographic_checks)


def _read_secret(path: Path, name: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name.upper()}_FILE: cannot read {path}: {exc}") from exc
    # Files written by editors and `echo` end with a newline that is no part of the password.
    return text.rstrip("\r\n")


def env_name(field: str) -> str:
    return field.upper()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, or raise ConfigError naming the setting that is wrong."""
    file_values = _read_toml(config_file) if config_file else {}
    flags = {k: v for k, v in overrides.items() if v is not None}
    try:
        # Environment beats the file: the file only fills what the environment leaves unset.
        token = _FILE_VALUES.set(file_values)
        try:
            settings = Settings(**flags)
        finally:
            _FILE_VALUES.reset(token)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    _check_openmrs_login(settings)
    _check_orthanc_token(settings)
    _ledger_password(settings)
    if settings.sync_viewer is Viewer.CUSTOM and not settings.sync_viewer_url:
        raise ConfigError("SYNC_VIEWER_URL: required when SYNC_VIEWER is custom")
    if settings.sync_retry_max < settings.sync_retry_min:
        raise ConfigError("SYNC_RETRY_MAX: must not be below SYNC_RETRY_MIN")
    return settings


def _check_openmrs_login(settings: Settings) -> None:
    """A user and password, or (with OAUTH_ENABLED) a token URL, client id and secret."""
    if not settings.oauth_enabled:
        for name in ("openmrs_user", "openmrs_password"):
            value = getattr(settings, name)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not text.strip():
                raise ConfigError(f"{env_name(name)}: required but not set")
        return
    if settings.oauth_client_secret_file is not None:
        try:
            secret = settings.oauth_client_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"OAUTH_CLIENT_SECRET_FILE: cannot read it: {exc.strerror}") from exc
        settings.oauth_client_secret = SecretStr(secret)
    for name in ("oauth_access_token_url", "oauth_client_id", "oauth_client_secret"):
        value = getattr(settings, name)
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not text.strip():
            raise ConfigError(f"{env_name(name)}: required when OAUTH_ENABLED is true")
    url = settings.oauth_access_token_url
    if not url.startswith(("http://", "https://")):
        raise ConfigError("OAUTH_ACCESS_TOKEN_URL: must be an http:// or https:// URL")


def _ledger_password(settings: Settings) -> None:
    """The PostgreSQL ledger's password from SYNC_DATABASE_PASSWORD_FILE, never from both."""
    path = settings.sync_database_password_file
    if path is None:
        return
    location = settings.sync_database
    if not isinstance(location, PostgresURL):
        raise ConfigError("SYNC_DATABASE_PASSWORD_FILE: only for a postgresql:// SYNC_DATABASE")
    if location.password:
        raise ConfigError(
            "SYNC_DATABASE_PASSWORD_FILE: the URL in SYNC_DATABASE has a password already: "
            "give one or the other"
        )
    try:
        password = _read_secret(path, "sync_database_password")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    settings.sync_database = location.with_password(password)


def _check_orthanc_token(settings: Settings) -> None:
    """With ORTHANC_TOKEN_HEADER: an API key, or a token URL, client id and secret; not both."""
    if settings.orthanc_api_key_file is not None:
        try:
            key = settings.orthanc_api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"ORTHANC_API_KEY_FILE: cannot read it: {exc.strerror}") from exc
        settings.orthanc_api_key = SecretStr(key)
    if settings.orthanc_oauth_client_secret_file is not None:
        try:
            secret = settings.orthanc_oauth_client_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"ORTHANC_OAUTH_CLIENT_SECRET_FILE: cannot read it: {exc.strerror}"
            ) from exc
        settings.orthanc_oauth_client_secret = SecretStr(secret)
    has_key = bool(settings.orthanc_api_key.get_secret_value())
    has_oauth = bool(settings.orthanc_oauth_access_token_url)
    header = settings.orthanc_token_header.strip()
    if not header:
        if has_key or has_oauth:
            raise ConfigError(
                "ORTHANC_TOKEN_HEADER: required with ORTHANC_API_KEY or ORTHANC_OAUTH_* "
                "(token, or Authorization for Bearer)"
            )
        return
    if any(c in header for c in ": \r\n"):
        raise ConfigError("ORTHANC_TOKEN_HEADER: must be a header name")
    if has_key == has_oauth:
        raise ConfigError(
            "ORTHANC_TOKEN_HEADER: needs exactly one of ORTHANC_API_KEY and "
            "ORTHANC_OAUTH_ACCESS_TOKEN_URL"
        )
    if has_oauth:
        for name in ("orthanc_oauth_client_id", "orthanc_oauth_client_secret"):
            value = getattr(settings, name)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not text.strip():
                raise ConfigError(f"{env_name(name)}: required with ORTHANC_OAUTH_ACCESS_TOKEN_URL")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from exc
    values = {k.lower(): v for k, v in data.items()}
    unknown = sorted(set(values) - _known_names())
    if unknown:
        raise ConfigError(f"--config: unknown setting(s) {', '.join(unknown)} in {path}")
    return values


def _known_names() -> set[str]:
    # Ozone's EIP_FHIR_* names are read from the environment only; the file uses ours.
    return set(Settings.model_fields)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required but not set"
        if error["loc"]:
            message = f"{env_name(str(error['loc'][0]))}: {message}"
        lines.append(message)  # checks across settings name theirs in the message
    return "invalid settings: " + "; ".join(lines)
