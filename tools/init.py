"""``etx init``: a new exchange's folder, safe from its first run.

``etx init [--dir DIR]`` writes into DIR (default ``etx-exchange``, made in the current
folder):

- ``etx.toml``: the configuration of etx.example.toml (its sections, instruments,
  members and users, and so every key documented beside it), but with a fresh random
  secret for every user, stored only as its scrypt hash. The example's own secrets are
  public, and ``etx serve`` refuses them (``gateway.auth.EXAMPLE_SECRETS``).
  ``--always-open`` writes ``schedule = "always"`` (a test exchange that trades at any
  hour) instead of the example's national trading hours.
- ``credentials/MEMBER-USER.toml``: each user's secret, in the format the tools'
  ``--credentials`` read (``gateway.credentials``), each file ``chmod 600`` in a folder
  only its owner can open.
- ``data/``: the data folder of ``etx serve --data``, owner-only, with the registry store
  created as ``etx serve`` opens it and the copy of the configuration that the offline
  registry operations read, so that members can be funded before the first start.

Contract: nothing is ever overwritten. A DIR that already holds an ``etx.toml``, a
``credentials`` or a ``data`` folder is refused with one line and exit status 2; a
failure part way removes what this run made, so a second run starts clean. Every
secret is shown once, on a terminal only (not when standard output is a file or a
pipe), beside the path of its file, and never logged. Exit status 0 when made.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import sys
import tomllib
from pathlib import Path

import msgspec

from gateway.auth import EXAMPLE_SECRETS, hash_secret
from gateway.config import Config, ConfigError, loads
from gateway.credentials import Credentials, write_file
from gateway.datadir import registry_url, write_config_copy
from settlement.store import StoreError, open_store

EXAMPLE = Path(__file__).resolve().parents[1] / "etx.example.toml"
DEFAULT_DIR = "etx-exchange"
CONFIG = "etx.toml"
DATA = "data"
CREDENTIALS = "credentials"
SECRET_BYTES = 24  # 192 random bits, 32 characters: far inside the protocol's SECRET_MAX
DEPOSIT_YUAN = "1000000"  # what the printed next steps fund each member with
ALLOCATE_T = "10000"
SECTION = re.compile(r"^\[", re.MULTILINE)  # the first section ends the example's header comment
SECRET_HASH = re.compile(r'^secret_hash = "[^"\n]*"', re.MULTILINE)
NATIONAL = re.compile(r'^schedule = "national"', re.MULTILINE)
HEADER = """\
# etx.toml: this exchange's configuration, made by `etx init` from etx.example.toml,
# which documents every key. Prices are written in yuan and fee rates as fractions,
# read as exact decimals; unknown keys are errors.
#
# Each user's secret was made at random by etx init and is stored here only as its
# scrypt hash; the secret itself is in the user's file under credentials/ (chmod 600),
# which the tools read with --credentials. To change one, make a new hash with
#   etx serve --hash-secret
# put it in the user's secret_hash below, and the secret in its credentials file.

"""


class InitError(Exception):
    """A reason the folder cannot be made, in one line saying what to do."""


class Made(msgspec.Struct, frozen=True):
    """What ``make`` wrote: the folder's paths, the configuration, and each user's
    credentials with its role and file (the secrets only for ``report`` to show once)."""

    config: Path
    data: Path
    credentials: Path
    users: list[tuple[Credentials, str, Path]]
    cfg: Config


def configuration(example: str, secrets_by_user: dict[tuple[str, str], str], *, always_open: bool) -> str:
    """The example configuration's text with each user's secret_hash made from
    ``secrets_by_user`` and, with ``always_open``, schedule = "always". The text is
    read back and checked: every user has its new hash and none is the example's."""
    first = SECTION.search(example)
    if first is None:
        raise InitError(f"{EXAMPLE} has no section")
    body = example[first.start():]
    users = [(u["member"], u["user"]) for u in tomllib.loads(example).get("user", [])]  # in the file's order
    hashes = {who: hash_secret(secret) for who, secret in secrets_by_user.items()}
    order = iter(users)
    body, count = SECRET_HASH.subn(lambda _: f'secret_hash = "{hashes[next(order)]}"', body)
    if count != len(users):
        raise InitError(f"{EXAMPLE}: expected one secret_hash line per user ({len(users)}), found {count}")
    if always_open:
        body, count = NATIONAL.subn('schedule = "always"', body)
        if count != 1:
            raise InitError(f'{EXAMPLE}: expected one line schedule = "national", found {count}')
    text = HEADER + body
    cfg = loads(text)  # the other side of the change: the file as etx serve will read it
    assert {(u.member, u.user): u.secret_hash for u in cfg.user} == hashes, "a user lost its new secret_hash"
    assert not any(u.secret_hash in EXAMPLE_SECRETS for u in cfg.user), "a public example hash is left"
    assert cfg.exchange.schedule == "always" or not always_open, "the schedule is not always open"
    return text


def problem(folder: Path) -> str | None:
    """Why ``make`` must not write into ``folder``, if anything: it never overwrites."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder: give --dir a new folder"
    if (folder / CONFIG).exists():
        return (f"{folder} already holds an {CONFIG}, which etx init never overwrites: give --dir a new folder "
                f"(or serve it: etx serve --config {folder / CONFIG} --data {folder / DATA})")
    for name in (CREDENTIALS, DATA):
        if (folder / name).exists():
            return (f"{folder} already holds a {name} folder (of an earlier exchange?), which etx init never "
                    f"overwrites: give --dir a new folder")
    return None


def make(folder: Path, *, always_open: bool = False) -> Made:
    """Write the configuration, credentials and data folder (see the module docstring).
    InitError when the folder is refused, OSError or StoreError when it cannot be
    written (what this call made is removed again)."""
    refused = problem(folder)
    if refused:
        raise InitError(refused)
    try:
        example = EXAMPLE.read_text()
    except OSError as e:
        raise InitError(f"the example configuration {EXAMPLE} cannot be read ({e.strerror or e}): etx init "
                        "builds on it") from None
    users = tomllib.loads(example).get("user", [])
    secrets_by_user = {(u["member"], u["user"]): secrets.token_urlsafe(SECRET_BYTES) for u in users}
    roles = {(u["member"], u["user"]): str(u["role"]) for u in users}
    text = configuration(example, secrets_by_user, always_open=always_open)
    cfg = loads(text)
    made: list[Path] = []  # what to remove again if a later step fails, newest last
    try:
        if not folder.exists():
            folder.mkdir(parents=True)
            made.append(folder)
        credentials = _private_folder(folder / CREDENTIALS, made)
        written = []
        for (member, user), secret in secrets_by_user.items():
            assert "/" not in member + user, f"{member}/{user}: not a file name"
            creds = Credentials(member, user, secret)
            path = write_file(credentials / f"{member}-{user}.toml", creds, new=True)
            made.append(path)
            written.append((creds, roles[member, user], path))
        data = _private_folder(folder / DATA, made)
        store = open_store(registry_url(data, cfg.exchange.registry))  # as etx serve opens it
        try:
            store.migrate()
        finally:
            store.close()
        write_config_copy(data, text)  # what the offline registry operations read before the first start
        # Last, so that a folder holding it holds everything; owner-only: it names the hashes.
        config = folder / CONFIG
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        made.append(config)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except BaseException:
        for path in reversed(made):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    return Made(config, data, credentials, written, cfg)


def _private_folder(path: Path, made: list[Path]) -> Path:
    path.mkdir(mode=0o700)  # FileExistsError: refused by ``problem`` first, unless made meanwhile
    made.append(path)
    path.chmod(0o700)  # exactly, whatever the umask
    return path


def report(made: Made, *, show_secrets: bool, etx: str = "etx") -> str:
    """What ``etx init`` prints: the files, the users (with their secrets only when
    ``show_secrets``), and the next commands."""
    q = shlex.quote
    cfg = made.cfg
    width = max(len(str(p)) for p in (made.config, made.data, made.credentials))
    lines = [f"etx init: a new exchange in {made.config.parent}",
             f"  {str(made.config):<{width}}  the configuration ({_hours(cfg)})",
             f"  {str(made.data):<{width}}  the data folder: journal, snapshots and registry store",
             f"  {str(made.credentials):<{width}}  one credentials file per user (chmod 600), for the tools' "
             "--credentials",
             ""]
    if show_secrets:
        lines.append("Users and their secrets, shown this once (each is also in its file, which only you can read):")
    else:
        lines.append("Users (their secrets are not shown, since the output is not a terminal: each is in its "
                     "file, which only you can read):")
    for creds, role, path in made.users:
        secret = f"  {creds.secret}" if show_secrets else ""
        lines.append(f"  {creds.name:<16} {role:<10}{secret}  {path}")
    files = {role: path for _, role, path in reversed(made.users)}  # the first user of each role
    data = q(str(made.data))
    clerk = f"{etx} registry --data {data} --credentials {q(str(files['clerk']))}"
    authority = f"{etx} registry --data {data} --credentials {q(str(files['authority']))}"
    lines += ["", "Next: start the exchange",
              f"  {etx} serve --config {q(str(made.config))} --data {data}",
              "and fund its members (with the exchange running or not): the clerk opens each member's account and "
              f"deposits CNY {int(DEPOSIT_YUAN):,}, the authority allocates {int(ALLOCATE_T):,} t of each vintage"]
    for member in cfg.member:
        lines.append(f"  {clerk} open {q(member.id)}" + (f" --name {q(member.name)}" if member.name else ""))
        lines.append(f"  {clerk} deposit {q(member.id)} {DEPOSIT_YUAN}")
        for instrument in cfg.instrument:
            lines.append(f"  {authority} allocate {q(member.id)} {q(instrument.symbol)} {ALLOCATE_T}")
    return "\n".join(lines)


def _hours(cfg: Config) -> str:
    if cfg.exchange.schedule == "always":
        return 'schedule = "always": it trades at any hour'
    return ("national trading hours, 09:30-11:30 and 13:00-15:00 UTC+8; etx init --always-open makes a test "
            "exchange that trades at any hour")


def _etx() -> str:
    """How to run this etx again from here: ``etx`` when the shell finds this one, else
    its path (``./dev init`` runs .venv/bin/etx, which is not on the PATH)."""
    me = Path(sys.argv[0])
    found = shutil.which("etx")
    if me.name != "etx" or (found and Path(found).resolve() == me.resolve()):
        return "etx"
    near = os.path.relpath(me)
    return shlex.quote(str(me.resolve()) if near.startswith("..") else near)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR,
                        help=f"the new exchange's folder (default {DEFAULT_DIR}); one that holds an {CONFIG} is "
                             "refused, never overwritten")
    parser.add_argument("--always-open", action="store_true",
                        help='write schedule = "always": a test exchange that trades at any hour (default: the '
                             "national trading hours of etx.example.toml)")


def run(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    try:
        made = make(folder, always_open=args.always_open)
    except InitError as e:
        print(f"etx init: {e}")
        return 2
    except (OSError, StoreError, ConfigError) as e:
        print(f"etx init: {folder} cannot be made ({getattr(e, 'strerror', None) or e}); nothing was left there")
        return 2
    print(report(made, show_secrets=sys.stdout.isatty(), etx=_etx()), flush=True)
    return 0
