"""The one error tree of the service.

Foreign errors (httpx, sqlite3, pydantic) are translated into these at the module that talks to
the foreign thing. Whether an error is worth retrying is a property of the error, not of the caller.

    SyncError
    ├── ConfigError                  a setting is missing or invalid; names the setting
    ├── StoreError                   the state database cannot be read or written
    ├── LeaseHeld                    another process on the ledger is working that study now
    ├── ServerError                  a remote server did not do what was asked
    │   ├── CredentialsRefused       a server refuses our credentials: stop the work, never retry
    │   │   ├── OrthancAuthError
    │   │   ├── OpenMRSAuthError     (7 failed logins lock the OpenMRS account)
    │   │   └── TokenRefused         the token endpoint refuses the OAuth2 client
    │   ├── TokenEndpointError       the token endpoint failed or could not be reached
    │   ├── OrthancError
    │   │   ├── OrthancAuthError
    │   │   ├── OrthancNotFound      404: the resource was deleted meanwhile
    │   │   ├── OrthancUnsupported   415: Orthanc cannot decode this image
    │   │   └── RenderCrashed        Orthanc dropped the connection while rendering an instance
    │   └── OpenMRSError
    │       ├── OpenMRSAuthError
    │       └── UploadOutcomeUnknown the upload may or may not have been stored
    └── StudyRejected                the study itself cannot be synced as it is (bad UID, ...)
"""

from __future__ import annotations


class SyncError(Exception):
    """Base of every error the service raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(SyncError):
    """A setting is missing or invalid."""


class StoreError(SyncError):
    """The state database failed."""


class LeaseHeld(SyncError):
    """Another process sharing the ledger holds the lease on the study (or the work) asked
    for; a person's command refuses rather than work it at the same time."""


# Answers that say "the server is not there right now" rather than "this request failed".
_UNAVAILABLE = frozenset({429, 502, 503, 504})


class ServerError(SyncError):
    """A remote server failed; transport errors, 5xx and 429 are retryable, 4xx are not.

    `unavailable` marks failures of the server as a whole (connection refused, 502/503/504, 429):
    the loop then backs off instead of charging each study with a failed attempt.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool | None = None,
        unavailable: bool | None = None,
    ) -> None:
        if retryable is None:
            retryable = status is None or status >= 500 or status == 429
        super().__init__(message, retryable=retryable)
        self.status = status
        self.unavailable = status in _UNAVAILABLE if unavailable is None else unavailable


class CredentialsRefused(ServerError):
    """A server refuses the configured credentials; nothing can work until a person fixes them."""

    def __init__(self, message: str, *, status: int | None = 401) -> None:
        super().__init__(message, status=status, retryable=False)


class OrthancError(ServerError):
    """Orthanc answered with an error or could not be reached."""


class OrthancAuthError(CredentialsRefused, OrthancError):
    """Orthanc refuses ORTHANC_USER/ORTHANC_PASSWORD."""


class OrthancNotFound(OrthancError):
    """The resource is gone (deleted between the change and the fetch)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=404, retryable=False)


class OrthancUnsupported(OrthancError):
    """Orthanc cannot decode the instance (415)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=415, retryable=False)


class RenderCrashed(OrthancError):
    """Orthanc stopped answering while it rendered this instance: its decoders crash on some
    files (out-of-bounds reads in 1.10.1). The pass pauses as for any outage, and the instance
    is charged in the ledger, so that Orthanc is not asked to render it again and again."""

    def __init__(self, message: str, *, instance_id: str) -> None:
        super().__init__(message, retryable=True, unavailable=True)
        self.instance_id = instance_id


class OpenMRSError(ServerError):
    """OpenMRS answered with an error or could not be reached."""


class OpenMRSAuthError(CredentialsRefused, OpenMRSError):
    """OpenMRS refuses the credentials. Retrying would lock the account (7 failures)."""


class TokenRefused(CredentialsRefused):
    """The OAuth2 token endpoint (Keycloak) refuses the client id, secret or scope."""


class TokenEndpointError(ServerError):
    """The token endpoint answered with a server error or could not be reached."""


class UploadOutcomeUnknown(OpenMRSError):
    """The upload was sent but its outcome is unknown: it may have been stored."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, status=status, retryable=True)


class StudyRejected(SyncError):
    """The study's own data makes it impossible to sync (not retried until it changes)."""
