"""Helpers shared by the archive tests: mail written as an mbox, imported through the CLI."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path

import pytest

from bridge.cli import main


def mail(message_id: str, sender: str, subject: str, body: str, *, date: str,
         reply_to: str = "", attachment: bytes | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["Subject"] = subject
    message["Date"] = date
    message["Message-ID"] = f"<{message_id}>"
    if reply_to:
        message["In-Reply-To"] = f"<{reply_to}>"
        message["References"] = f"<{reply_to}>"
    message.set_content(body)
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="octet-stream",
                               filename="data.bin")
    return message.as_bytes()


def mbox(messages: list[bytes]) -> bytes:
    return b"".join(b"From - Mon Jan  5 10:00:00 2015\n" + raw.replace(b"\nFrom ", b"\n>From ")
                    + b"\n" for raw in messages)


def cli_json(capsys: pytest.CaptureFixture[str], settings_path: Path, *argv: str) -> object:
    code = main(["--config", str(settings_path), *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def import_mail(capsys: pytest.CaptureFixture[str], settings_path: Path, folder: Path,
                community: str, messages: list[bytes]) -> dict[str, object]:
    path = folder / f"{community}-{len(list(folder.glob('*.mbox')))}.mbox"
    path.write_bytes(mbox(messages))
    report = cli_json(capsys, settings_path, "import", "mbox", str(path), "--community",
                      community, "--quiet")
    assert isinstance(report, dict)
    assert report["archived"] == len(messages), report
    return report
