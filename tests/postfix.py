"""A throwaway Postfix instance for tests: its own configuration and queue, on loopback.

Started with `postfix -c DIR start` on a free port; its log goes to a file (there is no
syslog here). Its folders live in a world-traversable temporary folder because Postfix's
daemons run as the `postfix` user, who cannot enter pytest's private tmp_path.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port


def _postfix(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # postfix reports its errors on the terminal only: `script` gives it one.
    return subprocess.run(["script", "-qec", " ".join(["postfix", "-c", str(config), *args]),
                           "/dev/null"], capture_output=True, text=True, timeout=60)


class Postfix:
    def __init__(self, settings: dict[str, str]) -> None:
        if shutil.which("postfix") is None or shutil.which("script") is None:
            pytest.skip("Postfix is not installed (scripts/install-system-deps installs it)")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="causerie-postfix-"))
        self.root.chmod(0o755)
        self.config = self.root / "conf"
        self.config.mkdir()
        (self.root / "queue").mkdir()
        data = self.root / "data"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postfix")
        self.log = self.root / "postfix.log"
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.test.localhost",
            "mydomain": "test.localhost",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "maillog_file_prefixes": str(self.root),
            "maillog_file": str(self.log),
            "smtputf8_enable": "no",
            "biff": "no",
            "alias_maps": "",
            "alias_database": "",
            "append_dot_mydomain": "no",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        } | settings
        (self.config / "main.cf").write_text(
            "".join(f"{key} = {value}\n" for key, value in main.items()), encoding="utf-8")
        master = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if fields and not line.startswith(("#", " ", "\t")) and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.port}"
                fields[4] = "n"  # no chroot: the throwaway instance has no chroot tree
                line = "  ".join(fields)
            master.append(line)
        (self.config / "master.cf").write_text("\n".join(master) + "\n", encoding="utf-8")

    def start(self) -> None:
        result = _postfix(self.config, "start")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"postfix did not start: {result.stdout}\n{self.read_log()}")

    def stop(self) -> None:
        _postfix(self.config, "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def flush(self) -> None:
        _postfix(self.config, "flush")

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
