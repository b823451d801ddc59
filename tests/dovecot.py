"""A throwaway Dovecot for the IMAP tests and the benchmark: real IMAP over loopback.

`Dovecot(root)` writes its own configuration, a passwd-file of users and a self-signed
certificate under `root`, and runs `/usr/sbin/dovecot -F` on free loopback ports: one
listener for plain IMAP (STARTTLS offered) and one for implicit TLS. Mail is stored as
Maildir under `root/mail`. Nothing of the system's own Dovecot configuration is used.

Running as root (CI, this machine), Dovecot refuses root for its login processes and for
mail access; so logins run as `dovenull`, mail processes as `dovecot`, chrooted into
`root/mail` (so that they need no access to the private folders above it). Running as an
ordinary user, everything runs as that user without chroot.

The run directory holds Unix sockets, whose paths are limited to 108 bytes: it is a short
temporary folder of its own, removed by `close()`.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from imapclient import IMAPClient

from tests.conftest import free_port

DOVECOT = shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/dovecot"


def available() -> str:
    """'' when Dovecot and openssl can be run here, else why not (for pytest.skip)."""
    if not Path(DOVECOT).is_file():
        return f"dovecot not installed ({DOVECOT}); scripts/install-system-deps installs it"
    if not shutil.which("openssl"):
        return "openssl command not found (needed for the test certificate)"
    return ""


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (EC key: fast to make)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-days", "2"],
        check=True, capture_output=True)
    return cert, key


class Dovecot:
    """One Dovecot instance; `start()`/`stop()` may be called repeatedly on the same ports."""

    def __init__(self, root: Path, *, capability: str = "", extra: str = "",
                 port: int | None = None) -> None:
        """`capability` replaces the post-login CAPABILITY (to play an older server);
        `port` is the plain IMAP port (default: a free one)."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="dv-"))
        self.mail = root / "mail"
        self.mail.mkdir(exist_ok=True)
        self.passwd = root / "passwd"
        self.passwd.touch()
        self.log_path = root / "dovecot.log"
        self.cert, self.key = make_certificate(root)
        self.port = port or free_port()
        self.tls_port = free_port()
        self.capability = capability
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self.config = root / "dovecot.conf"
        self._write_config()

    # --- configuration -------------------------------------------------------------------

    def _write_config(self) -> None:
        if os.geteuid() == 0:
            mail_user = _first_user("dovecot", "nobody")
            os.chown(self.mail, mail_user.pw_uid, mail_user.pw_gid)
            users = (f"default_internal_user = root\ndefault_internal_group = root\n"
                     f"default_login_user = {_first_user('dovenull', 'nobody').pw_name}\n")
            userdb = f"uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={self.mail}/./%u"
            chroots = f"valid_chroot_dirs = {self.mail}\n"
            login_chroot = ""
        else:
            me = pwd.getpwuid(os.geteuid())
            group = grp.getgrgid(me.pw_gid).gr_name
            users = (f"default_internal_user = {me.pw_name}\n"
                     f"default_internal_group = {group}\n"
                     f"default_login_user = {me.pw_name}\n")
            userdb = f"uid={me.pw_uid} gid={me.pw_gid} home={self.mail}/%u"
            chroots = ""
            login_chroot = "  chroot =\n"
        capability = f"imap_capability = {self.capability}\n" if self.capability else ""
        self.config.write_text(f"""# written by tests/dovecot.py; throwaway
base_dir = {self.run_dir}
state_dir = {self.root}/state
instance_name = causerie-test-{self.port}
log_path = {self.log_path}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
auth_failure_delay = 0
mail_max_userip_connections = 100
{users}first_valid_uid = 1
{chroots}{capability}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd}
}}
userdb {{
  driver = static
  args = {userdb}
}}
mail_location = maildir:~/Maildir
service imap-login {{
{login_chroot}  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
{self.extra}
""", encoding="utf-8")

    def add_user(self, name: str, password: str) -> None:
        """A user whose password (and XOAUTH2 token: Dovecot checks it as one) is `password`.

        Dovecot looks at the passwd-file at most once a second: add users before `start()`
        (or a second before they log in).
        """
        with self.passwd.open("a", encoding="utf-8") as handle:
            handle.write(f"{name}:{{PLAIN}}{password}::::::\n")

    # --- running -------------------------------------------------------------------------

    def start(self, timeout: float = 15) -> None:
        """Start and wait until it listens (start and stop may come from two threads: a
        test, and a client wrapper that stops the server at a chosen moment)."""
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                return
            with self.log_path.open("ab") as log:
                process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.config)],
                                           stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)  # its own process group
            self.process = process
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError("dovecot exited:\n" + self.log()[-3000:])
                with socket.socket() as probe:
                    probe.settimeout(1)
                    if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                        return
                if time.monotonic() > deadline:
                    self._stop()
                    raise RuntimeError("dovecot did not listen in time:\n"
                                       + self.log()[-3000:])
                time.sleep(0.02)

    def stop(self) -> None:
        """Shut Dovecot down and wait for it, connections included.

        The master's SIGTERM alone leaves the imap process of an open connection serving
        until its client logs out; a stopped server must drop its clients, so the whole
        process group (ours: `start_new_session`) gets it, and SIGKILL for stragglers.
        """
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self.process is None:
            return
        group = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") \
            if self.log_path.exists() else ""

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this instance's certificate."""
        return ssl.create_default_context(cafile=str(self.cert))

    # --- acting as a mail client ---------------------------------------------------------

    @contextlib.contextmanager
    def client(self, user: str, password: str) -> Iterator[IMAPClient]:
        client = IMAPClient("127.0.0.1", self.port, ssl=False, timeout=30)
        try:
            client.login(user, password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def append(self, user: str, password: str, messages: Iterable[bytes],
               folder: str = "INBOX", flags: tuple[bytes, ...] = ()) -> list[int]:
        """APPEND each message (creating `folder` when missing); returns their UIDs."""
        uids = []
        with self.client(user, password) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for raw in messages:
                response = client.append(folder, raw, flags=flags)
                uids.append(_appended_uid(response))
        return uids

    def counts(self, user: str, password: str) -> dict[str, int]:
        """How many messages each folder holds (to check that nothing was deleted)."""
        with self.client(user, password) as client:
            return {name: int(client.folder_status(name, [b"MESSAGES"])[b"MESSAGES"])
                    for flags, _sep, name in client.list_folders()
                    if b"\\Noselect" not in flags}


def _appended_uid(response: bytes) -> int:
    """The UID from an APPENDUID response code: b'[APPENDUID 1795737957 7] Append completed.'"""
    text = response.decode() if isinstance(response, bytes) else str(response)
    if "APPENDUID" not in text:
        return 0
    return int(text.split("APPENDUID", 1)[1].split("]", 1)[0].split()[1])


def _first_user(*names: str) -> pwd.struct_passwd:
    for name in names:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"none of these system users exists: {', '.join(names)}")
