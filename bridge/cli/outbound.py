"""dkim: the outbound commands of the administrator's CLI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.cli import Context


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser("dkim", help="DKIM signing keys for outgoing mail",
                            description="Manage the DKIM key outgoing mail is signed with.")
    sub = p.add_subparsers(dest="dkim_command", metavar="ACTION", required=True)
    k = sub.add_parser(
        "keygen", help="write a new key pair and print the DNS TXT record to publish",
        description="Write a new RSA private key (mode 0600, never over an existing file) "
                    "and print the TXT record to publish in DNS. Then set [outbound] "
                    "dkim_selector and dkim_key_file.")
    k.add_argument("--selector", default="causerie", help="DKIM selector (default: causerie)")
    k.add_argument("--out", type=Path, metavar="PATH",
                   help="private key file (default: <data_dir>/dkim/<selector>.pem)")
    k.add_argument("--bits", type=int, choices=[1024, 2048, 3072, 4096], default=2048,
                   help="key size (default 2048, as RFC 8301 recommends)")
    k.add_argument("--domain", help="signing domain (default: the first [instance] domain)")
    k.set_defaults(handler=cmd_keygen)


def cmd_keygen(args: argparse.Namespace, context: Context) -> int:
    import re

    from bridge.cli import CommandError
    from outbound.dkim import dns_record, generate_key, write_key

    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?", args.selector, re.I):
        raise CommandError(f"{args.selector!r} is not a DKIM selector (letters, digits, '-')")
    settings = context.settings
    domain = args.domain or settings.instance.primary_domain
    path: Path = args.out or settings.instance.data_dir / "dkim" / f"{args.selector}.pem"
    if path.exists():
        raise CommandError(f"{path} exists already; choose another --out or --selector")
    private, public = generate_key(args.bits)
    try:
        write_key(path, private)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}") from None
    print(f"; private key written to {path}")
    print("; publish this record, then set in the settings:")
    print(f';   [outbound] dkim_selector = "{args.selector}"  dkim_key_file = "{path}"')
    print(dns_record(args.selector, domain, public))
    return 0
