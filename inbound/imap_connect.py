"""Opening the IMAP connection of one configured mailbox: its secret, TLS, login.

Shared by the poller (`inbound.imap`) and `causerie imap test`. Every way a connection can
fail becomes one `ImapFailure` whose `str()` is a single sentence an administrator can act
on (wrong password, untrusted certificate, nothing listening, missing folder), instead of
an imaplib traceback; the poller logs it and retries, the CLI prints it.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import ssl
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import (
    CapabilityError,
    IMAPClientAbortError,
    IMAPClientError,
    LoginError,
)

from bridge.settings import ImapMailbox

ClientFactory = Callable[..., IMAPClient]


class ImapFailure(Exception):
    """Why a mailbox cannot be read now; `str()` is one line for an administrator."""


class SecretMissing(ImapFailure):
    """The password or token could not be read (environment, file or command)."""


class LoginRefused(ImapFailure):
    """The server refused the user name and password (or token)."""


class TlsFailed(ImapFailure):
    """The TLS handshake failed, typically an untrusted or mismatched certificate."""


class Unreachable(ImapFailure):
    """Nothing answered at host:port (refused, unknown host, timeout, network down)."""


class FolderMissing(ImapFailure):
    """The watched folder does not exist on the server."""


class ServerError(ImapFailure):
    """The server answered a command with NO/BAD or the connection dropped mid-way."""


@dataclass(frozen=True)
class Secret:
    """What to log in with: a password, or an OAuth2 access token for XOAUTH2."""

    value: str
    xoauth2: bool = False


def where(box: ImapMailbox) -> str:
    """'user@host:port', for messages."""
    return f"{box.user or '?'} at {box.host}:{box.port}"


def read_secret(box: ImapMailbox, environ: Mapping[str, str],
                command_timeout: float = 30.0) -> Secret:
    """The password from the environment or a file, or a token from the token command.

    Read at every connection, so that a rotated password or a refreshed token is picked up
    without a restart. The token command is split like a shell line but not run by a shell.
    """
    if box.oauth2_token_command:
        argv = shlex.split(box.oauth2_token_command)
        try:
            done = subprocess.run(argv, capture_output=True, timeout=command_timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SecretMissing(f"oauth2_token_command {argv[0]!r} could not run: "
                                f"{_reason(exc)}") from None
        if done.returncode != 0:
            error = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise SecretMissing(f"oauth2_token_command {argv[0]!r} failed with status "
                                f"{done.returncode}" + (f": {error[-1]}" if error else ""))
        token = done.stdout.decode("utf-8", "replace").strip()
        if not token:
            raise SecretMissing(f"oauth2_token_command {argv[0]!r} printed no token")
        return Secret(token, xoauth2=True)
    if box.password_env:
        value = environ.get(box.password_env, "")
        if not value:
            raise SecretMissing(f"environment variable {box.password_env} (password_env) is "
                                "not set or empty")
        return Secret(value)
    if box.password_file is not None:
        try:
            value = box.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretMissing(f"password_file {box.password_file} cannot be read: "
                                f"{_reason(exc)}") from None
        if not value:
            raise SecretMissing(f"password_file {box.password_file} is empty")
        return Secret(value)
    raise SecretMissing("no password_env, password_file or oauth2_token_command")


def connect(box: ImapMailbox, secret: Secret, *, ssl_context: ssl.SSLContext | None = None,
            timeout: float = 30.0, factory: ClientFactory = IMAPClient) -> IMAPClient:
    """A logged-in client for `box`, or an `ImapFailure` saying why not.

    `ssl_context` defaults to the system's trust store (`SSL_CERT_FILE` is honoured);
    `factory` is the seam the tests use to play a misbehaving client.
    """
    context = ssl_context or ssl.create_default_context(
        cafile=str(box.ca_file) if box.ca_file else None)
    try:
        if box.tls == "implicit":
            client = factory(box.host, box.port, ssl=True, ssl_context=context,
                             timeout=timeout)
        else:
            client = factory(box.host, box.port, ssl=False, timeout=timeout)
    except Exception as exc:
        raise failure(exc, box) from exc
    try:
        if box.tls == "starttls":
            try:
                client.starttls(context)
            except CapabilityError:
                raise TlsFailed(f"{box.host}:{box.port} does not offer STARTTLS "
                                "(tls = \"starttls\"); use tls = \"implicit\" and its TLS "
                                "port") from None
        if secret.xoauth2:
            client.oauth2_login(box.user, secret.value)
        else:
            client.login(box.user, secret.value)
    except BaseException as exc:
        close_quietly(client)
        if isinstance(exc, ImapFailure):
            raise
        if isinstance(exc, Exception):
            raise failure(exc, box) from exc
        raise
    keepalive(client)
    return client


def failure(exc: BaseException, box: ImapMailbox) -> ImapFailure:
    """One administrator-readable sentence for an exception raised while talking to `box`."""
    if isinstance(exc, ImapFailure):
        return exc
    address = f"{box.host}:{box.port}"
    if isinstance(exc, LoginError):
        how = "XOAUTH2 token" if box.oauth2_token_command else "password"
        return LoginRefused(f"login refused by {address} for user {box.user!r} (check the "
                            f"{how}): {_server_text(exc)}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsFailed(f"TLS with {address} failed: the server's certificate is not "
                         f"trusted ({exc.verify_message or exc.reason})")
    if isinstance(exc, ssl.SSLError):
        return TlsFailed(f"TLS with {address} failed: {exc.reason or exc} (is {box.port} a "
                         f"{'TLS' if box.tls == 'implicit' else 'plain IMAP'} port?)")
    if isinstance(exc, socket.gaierror):
        return Unreachable(f"cannot connect to {address}: unknown host ({exc.strerror})")
    if isinstance(exc, TimeoutError | socket.timeout):
        return Unreachable(f"no answer from {address} (timed out)")
    if isinstance(exc, ConnectionRefusedError):
        return Unreachable(f"cannot connect to {address}: connection refused (is the server "
                           "running, is the port right?)")
    if isinstance(exc, OSError):
        return Unreachable(f"connection to {address} failed: {_reason(exc)}")
    if isinstance(exc, IMAPClientAbortError):
        return ServerError(f"connection to {address} dropped: {_server_text(exc)}")
    if isinstance(exc, IMAPClientError):
        return ServerError(f"{address}: {_server_text(exc)}")
    return ServerError(f"{address}: {type(exc).__name__}: {exc}")


def keepalive(client: IMAPClient) -> None:
    """TCP keepalive, so that a peer that vanished without a FIN is noticed within minutes
    even while we sit in IDLE (where we would otherwise wait for the next re-issue)."""
    try:
        sock = client.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except (OSError, AttributeError):
        pass


def close_quietly(client: IMAPClient) -> None:
    """LOGOUT when the connection still works, else just close the socket."""
    try:
        client.logout()
        return
    except Exception:
        pass
    with contextlib.suppress(Exception):
        client.shutdown()


def _server_text(exc: BaseException) -> str:
    text: Any = exc.args[0] if exc.args else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text).strip()
    if len(text) > 2 and text[0] == "b" and text[1] in "'\"" and text[-1] == text[1]:
        text = text[2:-1]  # imapclient wraps the server's bytes in str(): "b'[...] ...'"
    return text or type(exc).__name__


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
