"""Settings: defaults, the file, environment overrides, and one clear line for a wrong value."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.settings import Settings, SettingsError, masked

ROOT = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return Settings.load(path, environ=environ or {})


def test_documented_defaults_file_is_valid_and_matches_builtin_defaults(tmp_path: Path) -> None:
    documented = Settings.load(ROOT / "settings.toml", environ={})
    builtin = load(tmp_path, "")
    assert documented.smtp == builtin.smtp
    assert documented.web == builtin.web
    assert documented.outbound == builtin.outbound
    assert documented.digest == builtin.digest
    assert documented.processor == builtin.processor
    assert documented.imap == ()
    assert (documented.smtp.host, documented.smtp.port) == ("127.0.0.1", 2525)
    assert (documented.web.host, documented.web.port) == ("127.0.0.1", 8080)
    assert documented.instance.data_dir == ROOT / "var"
    assert documented.database_url == f"sqlite:///{ROOT / 'var' / 'causerie.db'}"
    assert documented.outbound.outbox_is_maildir


def test_relative_paths_are_relative_to_the_settings_file(tmp_path: Path) -> None:
    settings = load(tmp_path, '[instance]\ndata_dir = "data"\n[outbound]\n'
                              'dkim_selector = "s1"\ndkim_key_file = "keys/dkim.pem"\n')
    assert settings.instance.data_dir == tmp_path / "data"
    assert settings.outbound.dkim_key_file == tmp_path / "keys" / "dkim.pem"
    assert settings.outbox_dir == tmp_path / "data" / "outbox"


def test_environment_overrides_single_keys(tmp_path: Path) -> None:
    settings = load(tmp_path, "[smtp]\nport = 2600\n", {
        "CAUSERIE_DATABASE__URL": "postgresql+psycopg://db.internal/causerie",
        "CAUSERIE_SMTP__PORT": "2700",
        "CAUSERIE_INSTANCE__DOMAINS": "a.example, b.example",
        "CAUSERIE_DIGEST__ONE_EMAIL_PER_CADENCE": "false",
        "UNRELATED": "x",
    })
    assert settings.database_url == "postgresql+psycopg://db.internal/causerie"
    assert settings.smtp.port == 2700
    assert settings.instance.domains == ("a.example", "b.example")
    assert settings.digest.one_email_per_cadence is False


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text('[instance]\nname = "Other"\n', encoding="utf-8")
    assert Settings.load(None, environ={"CAUSERIE_CONFIG": str(path)}).instance.name == "Other"


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("[smtp]\nport = 70000\n", "[smtp] port", "an integer from 1 to 65535"),
    ('[instance]\ndomains = ["not a domain"]\n', "[instance] domains", "mail domain"),
    ('[instance]\nbase_url = "ftp://x"\n', "[instance] base_url", "URL"),
    ('[database]\nurl = "mysql://x"\n', "[database] url", "postgresql"),
    ('[digest]\ndaily_time = "25:00"\n', "[digest] daily_time", "HH:MM"),
    ('[digest]\nweekly_day = "funday"\n', "[digest] weekly_day", "'monday'"),
    ('[instance]\ntimezone = "Mars/Olympus"\n', "[instance] timezone", "IANA"),
    ('[outbound]\nrelay_tls = "maybe"\n', "[outbound] relay_tls", "'starttls'"),
    ("[smtp]\nprot = 25\n", "[smtp] prot", "no such key"),
    ("[smpt]\nport = 25\n", "[smpt]", "sections"),
    ('[smtp]\ntls_cert = "c.pem"\n', "[smtp] tls_key", "both"),
])
def test_wrong_values_name_key_value_and_expectation(tmp_path: Path, text: str, key: str,
                                                    expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"setting {key} = ")
    assert expected in message


def test_imap_mailboxes(tmp_path: Path) -> None:
    settings = load(tmp_path, """
[[imap.mailbox]]
name = "sales"
host = "imap.example.org"
user = "u"
password_env = "SALES_PW"

[[imap.mailbox]]
name = "local"
host = "127.0.0.1"
port = 1143
tls = "none"
user = "u"
password_file = "pw.txt"
after = "seen"
community = "rd"
""")
    sales, local = settings.imap
    assert (sales.port, sales.tls, sales.folder, sales.after) == (993, "implicit", "INBOX", "move")
    assert sales.processed_folder == "Causerie/Processed"
    assert local.password_file == tmp_path / "pw.txt"
    assert (local.after, local.community) == ("seen", "rd")


@pytest.mark.parametrize(("box", "key"), [
    ('host = "imap.example.org"\nuser = "u"\npassword = "hunter2"', "password"),
    ('host = "imap.example.org"\nuser = "u"\ntls = "none"\npassword_env = "X"', "tls"),
    ('host = "imap.example.org"\nuser = "u"', "password_env"),
])
def test_imap_mailbox_refusals(tmp_path: Path, box: str, key: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(tmp_path, f"[[imap.mailbox]]\n{box}\n")
    assert f"[[imap.mailbox]] #1 {key} = " in str(info.value)
    assert "hunter2" not in str(info.value)


def test_secret_is_generated_once_private_and_masked(tmp_path: Path) -> None:
    settings = load(tmp_path, '[instance]\ndata_dir = "var"\n'
                              '[database]\nurl = "postgresql+psycopg://u:pw@h/db"\n')
    secret = settings.secret_key()
    assert len(secret) >= 32
    assert settings.secret_key() == secret
    mode = stat.S_IMODE(os.stat(settings.instance.secret_file).st_mode)
    assert mode == 0o600
    shown = masked(settings)
    assert shown["instance"]["secret"] == "***"
    assert shown["database"]["url"] == "postgresql+psycopg://u:***@h/db"
    assert secret.decode() not in str(shown)


def test_bad_settings_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[web]\nport = -1\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "bridge", "--config", str(path),
                             "community", "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "causerie: setting [web] port = -1: expected an integer from 1 to 65535"]
    assert "Traceback" not in result.stderr


def test_served_domains_are_not_staff_domains(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"\[instance\] staff_domains = 'example.com'"):
        load(tmp_path, '[instance]\ndomains = ["example.com"]\nstaff_domains = ["example.com"]\n')


def test_imap_processed_folder_must_differ(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="processed_folder = 'INBOX'"):
        load(tmp_path, '[[imap.mailbox]]\nhost = "imap.example.org"\nuser = "u"\n'
                       'password_env = "X"\nprocessed_folder = "INBOX"\n')
