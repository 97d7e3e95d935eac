"""Bearer-token access control: a grpc.aio server interceptor and the tokens file it reads.

The tokens file (``tokens_file`` setting) is TOML and stores only SHA-256 digests of the tokens::

    [[token]]
    name = "ci"                          # shown in logs; unique
    sha256 = "9f86d081884c7d65…"         # hex digest of the secret token
    scopes = ["jobs:read", "jobs:write"] # any of jobs:read, jobs:write, jobs:work, schedules:write, admin
    queues = ["media"]                   # optional: the queues a `jobs:work` token's workers may serve

Make a token and its digest with::

    TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    printf '%s' "$TOKEN" | jobwire hash-token     # prints the sha256 line's value

Clients send ``authorization: Bearer <token>`` as RFC 6750 (section 2.1) spells it: the scheme
``Bearer`` in any letter case, exactly one space, and the token in the ``b64token`` alphabet
(letters, digits, ``-._~+/``, then any ``=`` padding), with nothing before or after. Anything else,
a second ``authorization`` entry included, is refused as a missing token. Each call's token is
hashed and compared with every stored digest using :func:`hmac.compare_digest`, without stopping
at the first match, so the time taken does not reveal which (or whether a) token matched. Health
checks and reflection stay open for probes and tools. A call without a valid token gets
UNAUTHENTICATED; one whose token lacks the method's scope gets PERMISSION_DENIED; both carry an
ErrorInfo with that reason.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import grpc
from grpc import aio

from jobwire_server.api.errors import status_with

__all__ = [
    "ADMIN",
    "BEARER_CREDENTIALS",
    "METHOD_SCOPES",
    "OPEN_PREFIXES",
    "READ",
    "SCHEDULES",
    "SCOPES",
    "TOKEN_PATTERN",
    "WORK",
    "WRITE",
    "AuthConfigError",
    "Token",
    "TokenAuthInterceptor",
    "hash_token",
    "load_tokens",
    "scope_refused",
    "server_credentials",
]

READ: Final = "jobs:read"
WRITE: Final = "jobs:write"
ADMIN: Final = "admin"
#: Creating, changing and firing schedules: a schedule enqueues jobs on its own, for as long as it lives.
SCHEDULES: Final = "schedules:write"
#: Remote workers: WorkerService.Connect and nothing else (optionally only for some queues).
WORK: Final = "jobs:work"
SCOPES: Final = frozenset({READ, WRITE, ADMIN, SCHEDULES, WORK})

_SERVICE: Final = "/jobwire.v1.JobService/"
#: The scope each JobService method needs; ``admin`` grants every method, listed here or not.
METHOD_SCOPES: Final[Mapping[str, str]] = {
    # CancelJobs and RetryJobs need `admin` as well when their filter matches more than one job:
    # the servicer checks that once it has counted (`scope_refused`).
    **{_SERVICE + name: WRITE for name in ("Enqueue", "EnqueueBatch", "CancelJob", "RetryJob", "CancelJobs",
                                           "RetryJobs")},
    **{_SERVICE + name: READ for name in ("GetJob", "ListJobs", "WatchJob", "WatchEvents", "GetQueueStats",
                                             "ListWebhookDeliveries")},
    **{_SERVICE + name: READ for name in ("GetSchedule", "ListSchedules")},
    **{_SERVICE + name: SCHEDULES for name in ("CreateSchedule", "UpdateSchedule", "DeleteSchedule",
                                               "PauseSchedule", "ResumeSchedule", "TriggerSchedule")},
    "/jobwire.v1.WorkerService/Connect": WORK,
}
#: Methods under these prefixes need no token: load balancers probe health, tools list services.
OPEN_PREFIXES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
#: RFC 6750 §2.1 credentials: the scheme (case-insensitive, RFC 9110 §11.1), one space, a b64token.
BEARER_CREDENTIALS: Final = re.compile(r"(?i:bearer) ([A-Za-z0-9._~+/-]+=*)")
#: A token a client can send at all (the b64token alphabet of RFC 6750).
TOKEN_PATTERN: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_TOKEN_KEYS: Final = frozenset({"name", "sha256", "scopes", "queues"})

_log = logging.getLogger("jobwire.auth")


class AuthConfigError(ValueError):
    """The tokens file or a TLS file cannot be read or is malformed; the message is one line naming it."""


@dataclass(frozen=True, slots=True)
class Token:
    """One configured token: its name, the SHA-256 digest of its secret and the scopes it grants."""

    name: str
    digest: bytes
    scopes: frozenset[str]
    #: The queues a `jobs:work` token's workers may serve; empty means every queue.
    queues: frozenset[str] = frozenset()

    def may_serve(self, queues: Sequence[str]) -> bool:
        """Whether a worker with this token may take jobs from `queues` (empty: every queue)."""
        if ADMIN in self.scopes or not self.queues:
            return True
        return bool(queues) and set(queues) <= self.queues

    def allows(self, method: str) -> bool:
        return ADMIN in self.scopes or METHOD_SCOPES.get(method) in self.scopes


def hash_token(secret: str) -> str:
    """The value to store as ``sha256`` in the tokens file for `secret` (hex SHA-256 of its UTF-8)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- tokens file


def load_tokens(path: str) -> tuple[Token, ...]:
    """Read and validate the tokens file; raise :class:`AuthConfigError` with one line otherwise."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthConfigError(f"cannot read tokens file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AuthConfigError(f"tokens file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuthConfigError(f"tokens file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"token"})
    if unknown:
        raise AuthConfigError(f"tokens file {path}: unknown key {unknown[0]!r} (expected [[token]] tables)")
    entries = data.get("token", [])
    if not isinstance(entries, list) or not entries:
        raise AuthConfigError(f"tokens file {path} defines no [[token]] tables")
    tokens = [_parse_token(path, index, entry) for index, entry in enumerate(entries)]
    _check_unique(path, tokens)
    return tuple(tokens)


def _parse_token(path: str, index: int, entry: Any) -> Token:
    where = f"tokens file {path}: token {index + 1}"
    if not isinstance(entry, dict):
        raise AuthConfigError(f"{where} must be a [[token]] table")
    if "secret" in entry:
        raise AuthConfigError(f"{where} holds a plain secret; store its digest as sha256 (see `jobwire hash-token`)")
    unknown = sorted(set(entry) - _TOKEN_KEYS)
    if unknown:
        raise AuthConfigError(f"{where}: unknown key {unknown[0]!r} (expected name, sha256, scopes, queues)")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise AuthConfigError(f"{where}: name must be a non-empty string")
    where = f"tokens file {path}: token {name!r}"
    digest = entry.get("sha256")
    if not isinstance(digest, str) or _HEX_DIGEST.fullmatch(digest) is None:
        raise AuthConfigError(f"{where}: sha256 must be 64 hex digits (the output of `jobwire hash-token`)")
    scopes = entry.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise AuthConfigError(f"{where}: scopes must be a non-empty list of {', '.join(sorted(SCOPES))}")
    bad = sorted(set(scopes) - SCOPES)
    if bad:
        raise AuthConfigError(f"{where}: unknown scope {bad[0]!r} (known: {', '.join(sorted(SCOPES))})")
    queues = entry.get("queues", [])
    if not isinstance(queues, list) or not all(isinstance(q, str) and q for q in queues):
        raise AuthConfigError(f"{where}: queues must be a list of queue names")
    if queues and WORK not in scopes:
        raise AuthConfigError(f"{where}: queues limits the {WORK!r} scope, which this token lacks")
    return Token(name=name, digest=bytes.fromhex(digest), scopes=frozenset(scopes), queues=frozenset(queues))


def _check_unique(path: str, tokens: Sequence[Token]) -> None:
    names: set[str] = set()
    digests: set[bytes] = set()
    for token in tokens:
        if token.name in names:
            raise AuthConfigError(f"tokens file {path}: two tokens are named {token.name!r}")
        if token.digest in digests:
            raise AuthConfigError(f"tokens file {path}: token {token.name!r} has the same sha256 as another")
        names.add(token.name)
        digests.add(token.digest)


# ----------------------------------------------------------------------------- TLS


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with `client_ca`, mutual TLS: a client must present a
    certificate that CA signed, or the handshake fails before any RPC."""
    ca = _pem(client_ca, "TLS client CA", b"CERTIFICATE-----") if client_ca else None
    pair = (_pem(key, "TLS key", b"PRIVATE KEY-----"), _pem(cert, "TLS certificate", b"CERTIFICATE-----"))
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def _pem(path: str, what: str, marker: bytes) -> bytes:
    # gRPC reports a malformed PEM only as a failure to bind the port; check the obvious here.
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise AuthConfigError(f"{what} {path} is not a PEM file (expected a '-----BEGIN …{marker.decode()}' block)")
    return data


# ----------------------------------------------------------------------------- interceptor

if TYPE_CHECKING:  # grpc's classes are generic only in the stubs
    Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]


class TokenAuthInterceptor(aio.ServerInterceptor):
    """Lets a call through when its bearer token grants the method's scope; ends it otherwise."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self._tokens = tuple(tokens)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        token = self.authenticate(handler_call_details.invocation_metadata)
        if token is None:
            _log.debug("unauthenticated call to %.200s", method)
            status = status_with(grpc.StatusCode.UNAUTHENTICATED,
                                 "missing or invalid bearer token (send 'authorization: Bearer <token>')",
                                 "UNAUTHENTICATED")
        elif not token.allows(method):
            _log.info("token %r lacks the scope for %.200s", token.name, method)
            # Only a known method's name is echoed back: an unknown one is whatever the client sent.
            status = scope_refused(token, METHOD_SCOPES.get(method, ADMIN),
                                   method if method in METHOD_SCOPES else "this method")
        else:
            return await continuation(handler_call_details)
        return _refusal(await continuation(handler_call_details), status)

    def authenticate(self, metadata: Any) -> Token | None:
        """The token the call's ``authorization`` metadata presents, or None when it is missing,
        malformed or matches no stored digest."""
        values = [value for key, value in (metadata or ()) if key.lower() == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        match = BEARER_CREDENTIALS.fullmatch(values[0])
        if match is None:
            return None
        presented = hashlib.sha256(match.group(1).encode("ascii")).digest()
        found: Token | None = None
        for token in self._tokens:  # no early exit: every digest is compared
            if hmac.compare_digest(presented, token.digest):
                found = token
        return found


def scope_refused(token: Token, scope: str, what: str) -> grpc.Status:
    """PERMISSION_DENIED for `token`, which lacks `scope` for `what`: the interceptor's refusal, and
    the one a method that needs more scope for some requests gives (same message, same ErrorInfo)."""
    return status_with(grpc.StatusCode.PERMISSION_DENIED,
                       f"token {token.name!r} lacks scope {scope!r} needed for {what}", "PERMISSION_DENIED",
                       {"scope": scope})


def _refusal(handler: grpc.RpcMethodHandler[Any, Any] | None,
             status: grpc.Status) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` (unary/stream, as the client expects) that ends the
    call with `status` without running the method. The request is not deserialized."""

    async def refuse(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort_with_status(status)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse)
