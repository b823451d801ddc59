"""Settings: read once from a TOML file, overridden by environment variables, validated.

`Settings.load()` is the only place configuration is read. Everything else gets the
resulting frozen `Settings` object passed in (no global configuration object).

A wrong value raises `SettingsError`, whose message is one line naming the key, the
value and what was expected; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ENV_PREFIX = "CAUSERIE_"
CONFIG_ENV = "CAUSERIE_CONFIG"
DEFAULT_CONFIG_NAME = "settings.toml"


class SettingsError(Exception):
    """A setting is missing or wrong. `str()` is the one line shown to the administrator."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        super().__init__(f"setting {key} = {value!r}: expected {expected}")


# --- value parsers: each takes the raw TOML (or environment) value and returns the typed one,
# raising ValueError(expected) when the value does not fit.


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"an integer from {low} to {high}")
        return value

    return parse


def _float_range(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"a number from {low} to {high}") from None
        if isinstance(value, bool) or not low <= number <= high:
            raise ValueError(f"a number from {low} to {high}")
        return number

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.lower() in {"true", "1", "yes"}
    raise ValueError("true or false")


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(repr(c) for c in choices))
        return str(value)

    return parse


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")


def parse_domain(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a mail domain such as 'example.org'")
    try:
        ascii_form = value.strip().lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError("a mail domain such as 'example.org'") from None
    if not _DOMAIN_RE.match(ascii_form):
        raise ValueError("a mail domain such as 'example.org'")
    return ascii_form


def _domains(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # from the environment: comma separated
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, list):
        raise ValueError("a list of mail domains such as ['example.org']")
    return tuple(parse_domain(item) for item in value)


def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("an http:// or https:// URL")
    return value.rstrip("/")


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError("a host name or IP address")
    return value


def _optional_host(value: Any) -> str:
    return "" if value == "" else _host(value)


def _time_of_day(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", value):
        raise ValueError("a time of day as 'HH:MM'")
    return value


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _timezone(value: Any) -> str:
    try:
        ZoneInfo(_str(value))
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError("an IANA time zone such as 'Europe/Paris'") from None
    return value


def _language(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^[a-z]{2}(_[A-Z]{2})?$", value):
        raise ValueError("a language code such as 'en' or 'fr'")
    return value


def _database_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a database URL such as 'postgresql+psycopg://host/db', or empty")
    if value and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
        raise ValueError("a sqlite:// or postgresql+psycopg:// URL, or empty for SQLite")
    return value


DENIED_ATTACHMENT_TYPES = (".exe", ".bat", ".cmd", ".com", ".scr", ".pif", ".vbs", ".js",
                           ".jse", ".wsf", ".msi", ".ps1", ".jar", ".hta", ".cpl",
                           "application/x-msdownload", "application/x-dosexec")


def _type_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(
            isinstance(v, str) and (v.startswith(".") or "/" in v) for v in value):
        raise ValueError("a list of file extensions ('.exe') and MIME types "
                         "('application/x-msdownload')")
    return tuple(v.lower() for v in value)


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or (value and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value)):
        raise ValueError("the name of an environment variable")
    return value


@dataclass(frozen=True)
class InstanceSettings:
    name: str
    domains: tuple[str, ...]
    base_url: str
    data_dir: Path
    staff_domains: tuple[str, ...]
    secret_file: Path
    language: str
    timezone: str

    @property
    def primary_domain(self) -> str:
        return self.domains[0]


@dataclass(frozen=True)
class DatabaseSettings:
    url: str


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    lmtp_host: str
    lmtp_port: int
    lmtp_socket: Path | None
    max_message_size: int
    max_recipients: int
    tls_cert: Path | None
    tls_key: Path | None
    max_connections_per_client: int
    max_messages_per_minute_per_client: int


@dataclass(frozen=True)
class WebSettings:
    host: str
    port: int


@dataclass(frozen=True)
class OutboundSettings:
    relay_host: str
    relay_port: int
    relay_tls: str
    relay_user: str
    relay_password_env: str
    dkim_selector: str
    dkim_key_file: Path | None
    max_retry_hours: int
    send_batch_size: int

    @property
    def outbox_is_maildir(self) -> bool:
        return not self.relay_host


@dataclass(frozen=True)
class DigestSettings:
    daily_time: str
    weekly_day: str
    weekly_time: str
    unanswered_after_hours: int
    max_items: int
    max_items_per_email: int
    one_email_per_cadence: bool


@dataclass(frozen=True)
class ProcessorSettings:
    thread_window_days: int
    max_attachment_size: int
    batch_size: int
    max_attempts: int
    inline_raw_limit: int
    trusted_authserv_ids: tuple[str, ...]
    denied_attachment_types: tuple[str, ...]


@dataclass(frozen=True)
class ImapMailbox:
    name: str
    host: str
    port: int
    tls: str
    user: str
    password_env: str
    password_file: Path | None
    oauth2_token_command: str
    folder: str
    after: str
    processed_folder: str
    community: str
    poll_interval: int
    ca_file: Path | None = None


@dataclass(frozen=True)
class Settings:
    source: Path | None
    instance: InstanceSettings
    database: DatabaseSettings
    smtp: SmtpSettings
    web: WebSettings
    outbound: OutboundSettings
    digest: DigestSettings
    processor: ProcessorSettings
    imap: tuple[ImapMailbox, ...] = field(default_factory=tuple)

    @property
    def database_url(self) -> str:
        """The effective URL: the configured one, or a SQLite file in the data directory."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.instance.data_dir / 'causerie.db'}"

    @property
    def outbox_dir(self) -> Path:
        return self.instance.data_dir / "outbox"

    @property
    def store_dir(self) -> Path:
        return self.instance.data_dir / "store"

    def secret_key(self) -> bytes:
        """The instance secret, created in the data directory on first use."""
        return load_or_create_secret(self.instance.secret_file)

    @classmethod
    def load(
        cls, path: Path | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Read `path` (or $CAUSERIE_CONFIG, or ./settings.toml), apply CAUSERIE_* overrides."""
        env = os.environ if environ is None else environ
        if path is None and env.get(CONFIG_ENV):
            path = Path(env[CONFIG_ENV])
        if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
            path = Path(DEFAULT_CONFIG_NAME)
        raw: dict[str, Any] = {}
        base = Path.cwd()
        if path is not None:
            path = path.resolve()
            base = path.parent
            try:
                with path.open("rb") as handle:
                    raw = tomllib.load(handle)
            except FileNotFoundError:
                raise SettingsError("--config", str(path), "an existing settings file") from None
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(str(path), "", f"valid TOML ({exc})") from None
        _apply_environment(raw, env)
        return _build(raw, base, path)


def _apply_environment(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """`CAUSERIE_SECTION__KEY=value` overrides one key of one section."""
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section == "imap":
            continue  # mailboxes are a list of tables; they come from the file only
        table = raw.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value


class _Section:
    """Reads typed keys of one TOML table, naming `[section] key` in every error."""

    def __init__(self, raw: dict[str, Any], name: str, label: str | None = None) -> None:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise SettingsError(f"[{name}]", value, "a table")
        self.values: dict[str, Any] = value
        self.label = label or f"[{name}]"
        self.seen: set[str] = set()

    def get(self, key: str, parse: Callable[[Any], Any], default: Any) -> Any:
        self.seen.add(key)
        if key not in self.values:
            return default
        value = self.values[key]
        try:
            return parse(value)
        except ValueError as exc:
            raise SettingsError(f"{self.label} {key}", value, str(exc)) from None

    def path(self, key: str, base: Path, default: str) -> Path | None:
        value = self.get(key, _str, default)
        if not value:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.values) - self.seen)
        if unknown:
            raise SettingsError(f"{self.label} {unknown[0]}", self.values[unknown[0]],
                                "no such key (check the spelling against settings.toml)")


def _build(raw: dict[str, Any], base: Path, source: Path | None) -> Settings:
    known = {"instance", "database", "smtp", "web", "outbound", "digest", "processor", "imap"}
    for section in raw:
        if section not in known:
            raise SettingsError(f"[{section}]", "...", "one of the sections of settings.toml")

    s = _Section(raw, "instance")
    domains = s.get("domains", _domains, ("localhost",))
    if not domains:
        raise SettingsError("[instance] domains", [], "at least one mail domain")
    data_dir = s.path("data_dir", base, "./var")
    assert data_dir is not None
    secret_file = s.path("secret_file", base, "") or data_dir / "secret.key"
    instance = InstanceSettings(
        name=s.get("name", _str, "Causerie"),
        domains=domains,
        base_url=s.get("base_url", _url, "http://127.0.0.1:8080"),
        data_dir=data_dir,
        staff_domains=s.get("staff_domains", _domains, ()),
        secret_file=secret_file,
        language=s.get("language", _language, "en"),
        timezone=s.get("timezone", _timezone, "UTC"),
    )
    s.check_unknown()
    for domain in instance.domains:
        if domain in instance.staff_domains:
            # Mail From our own domains is taken for a loop: people's addresses must be
            # elsewhere (lists.example.com for Causerie, example.com for the staff).
            raise SettingsError("[instance] staff_domains", domain,
                                "domains other than the ones Causerie serves ([instance] "
                                "domains), e.g. 'example.com' beside 'lists.example.com'")

    s = _Section(raw, "database")
    database = DatabaseSettings(url=s.get("url", _database_url, ""))
    s.check_unknown()

    s = _Section(raw, "smtp")
    port = _int_range(1, 65535)
    smtp = SmtpSettings(
        host=s.get("host", _host, "127.0.0.1"),
        port=s.get("port", port, 2525),
        lmtp_host=s.get("lmtp_host", _optional_host, ""),
        lmtp_port=s.get("lmtp_port", port, 2424),
        lmtp_socket=s.path("lmtp_socket", base, ""),
        max_message_size=s.get("max_message_size", _int_range(1024, 1 << 31), 25 * 1024 * 1024),
        max_recipients=s.get("max_recipients", _int_range(1, 100_000), 100),
        tls_cert=s.path("tls_cert", base, ""),
        tls_key=s.path("tls_key", base, ""),
        max_connections_per_client=s.get("max_connections_per_client", _int_range(1, 10_000), 20),
        max_messages_per_minute_per_client=s.get(
            "max_messages_per_minute_per_client", _int_range(1, 10_000_000), 6000),
    )
    if bool(smtp.tls_cert) != bool(smtp.tls_key):
        raise SettingsError("[smtp] tls_key", str(smtp.tls_key or ""),
                            "tls_cert and tls_key both set, or both empty")
    s.check_unknown()

    s = _Section(raw, "web")
    web = WebSettings(host=s.get("host", _host, "127.0.0.1"), port=s.get("port", port, 8080))
    s.check_unknown()

    s = _Section(raw, "outbound")
    outbound = OutboundSettings(
        relay_host=s.get("relay_host", _optional_host, ""),
        relay_port=s.get("relay_port", port, 25),
        relay_tls=s.get("relay_tls", _choice("none", "starttls", "implicit"), "none"),
        relay_user=s.get("relay_user", _str, ""),
        relay_password_env=s.get("relay_password_env", _env_name, ""),
        dkim_selector=s.get("dkim_selector", _str, ""),
        dkim_key_file=s.path("dkim_key_file", base, ""),
        max_retry_hours=s.get("max_retry_hours", _int_range(1, 24 * 30), 96),
        send_batch_size=s.get("send_batch_size", _int_range(1, 10_000), 100),
    )
    if bool(outbound.dkim_selector) != bool(outbound.dkim_key_file):
        raise SettingsError("[outbound] dkim_key_file", str(outbound.dkim_key_file or ""),
                            "dkim_selector and dkim_key_file both set, or both empty")
    s.check_unknown()

    s = _Section(raw, "digest")
    digest = DigestSettings(
        daily_time=s.get("daily_time", _time_of_day, "07:30"),
        weekly_day=s.get("weekly_day", _choice(*_WEEKDAYS), "monday"),
        weekly_time=s.get("weekly_time", _time_of_day, "07:30"),
        unanswered_after_hours=s.get("unanswered_after_hours", _int_range(1, 24 * 60), 24),
        max_items=s.get("max_items", _int_range(1, 1000), 30),
        max_items_per_email=s.get("max_items_per_email", _int_range(1, 1000), 30),
        one_email_per_cadence=s.get("one_email_per_cadence", _bool, True),
    )
    s.check_unknown()

    s = _Section(raw, "processor")
    processor = ProcessorSettings(
        thread_window_days=s.get("thread_window_days", _int_range(0, 3650), 30),
        max_attachment_size=s.get("max_attachment_size", _int_range(0, 1 << 31), 20 * 1024 * 1024),
        batch_size=s.get("batch_size", _int_range(1, 10_000), 200),
        max_attempts=s.get("max_attempts", _int_range(1, 100), 8),
        inline_raw_limit=s.get("inline_raw_limit", _int_range(0, 1 << 30), 256 * 1024),
        trusted_authserv_ids=s.get("trusted_authserv_ids", _domains, ()),
        denied_attachment_types=s.get("denied_attachment_types", _type_list,
                                      DENIED_ATTACHMENT_TYPES),
    )
    s.check_unknown()

    imap_raw = raw.get("imap", {})
    if not isinstance(imap_raw, dict):
        raise SettingsError("[imap]", imap_raw, "a table holding [[imap.mailbox]] entries")
    boxes = imap_raw.get("mailbox", [])
    if not isinstance(boxes, list):
        raise SettingsError("[[imap.mailbox]]", boxes, "a list of [[imap.mailbox]] tables")
    mailboxes = tuple(_imap_mailbox(box, index, base) for index, box in enumerate(boxes))
    names = [box.name for box in mailboxes]
    for name in names:
        if names.count(name) > 1:
            raise SettingsError("[[imap.mailbox]] name", name, "a name used by one mailbox only")

    return Settings(source=source, instance=instance, database=database, smtp=smtp, web=web,
                    outbound=outbound, digest=digest, processor=processor, imap=mailboxes)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _imap_mailbox(raw: Any, index: int, base: Path) -> ImapMailbox:
    if not isinstance(raw, dict):
        raise SettingsError(f"[[imap.mailbox]] #{index + 1}", raw, "a table")
    s = _Section({"m": raw}, "m", label=f"[[imap.mailbox]] #{index + 1}")
    box = ImapMailbox(
        name=s.get("name", _str, f"mailbox{index + 1}"),
        host=s.get("host", _host, ""),
        port=s.get("port", _int_range(1, 65535), 993),
        tls=s.get("tls", _choice("implicit", "starttls", "none"), "implicit"),
        user=s.get("user", _str, ""),
        password_env=s.get("password_env", _env_name, ""),
        password_file=s.path("password_file", base, ""),
        oauth2_token_command=s.get("oauth2_token_command", _str, ""),
        folder=s.get("folder", _str, "INBOX"),
        after=s.get("after", _choice("move", "seen"), "move"),
        processed_folder=s.get("processed_folder", _str, "Causerie/Processed"),
        community=s.get("community", _str, ""),
        poll_interval=s.get("poll_interval", _int_range(5, 86_400), 60),
        ca_file=s.path("ca_file", base, ""),
    )
    if "password" in raw:
        raise SettingsError(f"{s.label} password", "***",
                            "password_env or password_file, never the password itself")
    s.check_unknown()
    if not box.host:
        raise SettingsError(f"{s.label} host", "", "the IMAP server's host name")
    if box.after == "move" and box.processed_folder.strip("/") == box.folder.strip("/"):
        raise SettingsError(f"{s.label} processed_folder", box.processed_folder,
                            "a folder other than the watched folder")
    if box.tls == "none" and not _is_loopback(box.host):
        raise SettingsError(f"{s.label} tls", "none", "'implicit' or 'starttls' for a remote host")
    if not (box.password_env or box.password_file or box.oauth2_token_command):
        raise SettingsError(f"{s.label} password_env", "",
                            "password_env, password_file or oauth2_token_command")
    return box


def load_or_create_secret(path: Path) -> bytes:
    """Return the instance secret, generating 32 random bytes (mode 0600) when absent."""
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = os.urandom(32).hex().encode("ascii")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        return secret
    if len(data) < 32:
        raise SettingsError("[instance] secret_file", str(path), "a file holding at least 32 bytes")
    return data


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with secrets masked, for `check-config`."""
    from dataclasses import asdict

    def clean(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    data = clean(asdict(settings))
    url = data["database"]["url"]
    data["database"]["url"] = re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", url)
    data["database"]["effective_url"] = re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@",
                                               settings.database_url)
    data["instance"]["secret"] = "***"
    return data
