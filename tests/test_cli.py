"""The administrator's command line, driven as an administrator would drive it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.cli import build_parser, main
from bridge.settings import Settings


def run(capsys: pytest.CaptureFixture[str], settings_path: Path, *argv: str) -> tuple[int, str]:
    code = main(["--config", str(settings_path), *argv])
    out, err = capsys.readouterr()
    return code, out + err


def run_json(capsys: pytest.CaptureFixture[str], settings_path: Path, *argv: str) -> object:
    code = main(["--config", str(settings_path), *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def inited(capsys: pytest.CaptureFixture[str], settings_path: Path) -> Path:
    code, output = run(capsys, settings_path, "init", "--demo")
    assert code == 0, output
    return settings_path


def test_every_command_explains_itself() -> None:
    parser = build_parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    commands = actions[0].choices  # type: ignore[attr-defined]
    assert {"init", "serve", "check-config", "db", "community", "member", "org"} <= set(commands)
    for name, sub in commands.items():
        assert sub.format_help().strip(), name
        for action in sub._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for child_name, child in action.choices.items():
                    text = child.format_help()
                    assert "usage: causerie" in text, (name, child_name)
    result = subprocess.run([sys.executable, "-m", "bridge", "member", "import", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "CSV" in result.stdout and "Idempotent" in result.stdout


def test_init_demo_is_idempotent(capsys: pytest.CaptureFixture[str], inited: Path,
                                 settings: Settings) -> None:
    code, output = run(capsys, inited, "init", "--demo")
    assert code == 0 and "exists already" in output
    communities = run_json(capsys, inited, "community", "list")
    assert [c["slug"] for c in communities] == ["demo"]  # type: ignore[index]
    assert communities[0]["members"] == 2  # type: ignore[index]
    assert communities[0]["address"] == "demo@lists.example.org"  # type: ignore[index]
    assert settings.instance.secret_file.exists()
    assert (settings.instance.data_dir / "outbox").is_dir()


def test_community_lifecycle(capsys: pytest.CaptureFixture[str], inited: Path) -> None:
    created = run_json(capsys, inited, "community", "create", "rd", "--name", "R&D France",
                       "--policy", "moderated", "--visibility", "private", "--language", "fr")
    assert created["policy"] == "moderated"  # type: ignore[index]
    code, output = run(capsys, inited, "community", "create", "rd", "--name", "Again")
    assert code == 1 and "exists already" in output
    code, output = run(capsys, inited, "community", "create", "Bad Slug", "--name", "x")
    assert code == 1 and "cannot be a community name" in output
    changed = run_json(capsys, inited, "community", "set", "rd", "guests=true", "tag=R&D",
                       'goals={"answered_within_48h": 0.8}')
    assert changed["guests"] is True and changed["tag"] == "R&D"  # type: ignore[index]
    assert changed["goals"] == {"answered_within_48h": 0.8}  # type: ignore[index]
    code, output = run(capsys, inited, "community", "set", "rd", "colour=blue")
    assert code == 1 and "unknown setting 'colour'" in output
    shown = run_json(capsys, inited, "community", "show", "rd")
    assert shown["visibility"] == "private"  # type: ignore[index]
    code, _ = run(capsys, inited, "community", "delete", "rd", "--yes")
    assert code == 0
    code, output = run(capsys, inited, "community", "show", "rd")
    assert code == 1 and "no community named 'rd'" in output


def test_members(capsys: pytest.CaptureFixture[str], inited: Path) -> None:
    added = run_json(capsys, inited, "member", "add", "demo", "Carol@Partner.example",
                     "--name", "Carol", "--role", "guest", "--delivery", "weekly")
    assert added == {"email": "carol@partner.example", "action": "added",
                     "detail": "guest, weekly"}
    again = run_json(capsys, inited, "member", "add", "demo", "carol@partner.example",
                     "--role", "guest", "--delivery", "weekly")
    assert again["action"] == "unchanged"  # type: ignore[index]
    run_json(capsys, inited, "org", "add", "Partner SA", "--domain", "partner.example")
    members = {m["email"]: m for m in run_json(capsys, inited, "member", "list", "demo")}  # type: ignore[union-attr]
    carol = members["carol@partner.example"]
    assert (carol["kind"], carol["organisation"], carol["delivery"]) == (
        "guest", "Partner SA", "weekly")
    assert members["alice@example.com"]["kind"] == "staff"
    assert carol["bounce_score"] == 0.0 and carol["disabled_reason"] is None
    changed = run_json(capsys, inited, "member", "set", "demo", "carol@partner.example",
                       "--delivery", "daily", "--enable")
    assert changed["delivery"] == "daily"  # type: ignore[index]
    code, output = run(capsys, inited, "member", "remove", "demo", "carol@partner.example")
    assert code == 0
    code, output = run(capsys, inited, "member", "remove", "demo", "carol@partner.example")
    assert code == 1 and "is not a member" in output
    orgs = run_json(capsys, inited, "org", "list")
    assert orgs == [{"name": "Partner SA", "domains": ["partner.example"]}]


def test_member_import_is_idempotent_and_reports(capsys: pytest.CaptureFixture[str],
                                                 inited: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "members.csv"
    csv_file.write_text("email,name,role,delivery\n"
                        "dan@example.com,Dan,member,daily\n"
                        "eve@example.com,Ève,moderator,\n"
                        "not-an-address,Bad,member,each\n"
                        "fay@example.com,Fay,emperor,each\n", encoding="utf-8")
    code, output = run(capsys, inited, "member", "import", "demo", str(csv_file))
    assert code == 1  # errors are reported and make the exit status non-zero
    assert "2 added, 0 updated, 0 unchanged, 2 errors" in output
    assert "not a valid mail address" in output and "unknown role 'emperor'" in output
    code, output = run(capsys, inited, "member", "import", "demo", str(csv_file))
    assert "0 added, 0 updated, 2 unchanged, 2 errors" in output
    members = run_json(capsys, inited, "member", "list", "demo")
    emails = sorted(m["email"] for m in members)  # type: ignore[union-attr]
    assert emails == ["alice@example.com", "bob@example.com", "dan@example.com",
                      "eve@example.com"]


def test_check_config_masks_secrets(capsys: pytest.CaptureFixture[str], inited: Path,
                                    settings: Settings) -> None:
    data = run_json(capsys, inited, "check-config")
    assert data["instance"]["secret"] == "***"  # type: ignore[index]
    assert settings.secret_key().decode() not in json.dumps(data)
    status = run_json(capsys, inited, "db", "status")
    assert status["up_to_date"] is True  # type: ignore[index]


def test_serve_refuses_a_schema_that_is_behind(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[instance]\ndata_dir = "var"\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "bridge", "--config", str(path), "serve"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "run 'causerie db upgrade'" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    from tests.conftest import free_port

    path = tmp_path / "s.toml"
    path.write_text(f'[instance]\ndata_dir = "var"\n[smtp]\nport = {free_port()}\n'
                    f'[web]\nport = {free_port()}\n', encoding="utf-8")
    assert main(["--config", str(path), "init"]) == 0
    process = subprocess.Popen([sys.executable, "-m", "bridge", "--config", str(path), "serve"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "causerie is running" in line:
                break
        else:
            pytest.fail("serve did not start: " + "".join(lines))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
