"""A user's credentials for the tools: from a file only its owner can read, or a prompt.

Secrets never travel on a command line (they would stay in the shell's history and be
visible to every user in the process list). A tool takes them either from a
credentials file, TOML with three keys::

    member = "EXCH"
    user = "clerk"
    secret = "..."

which must be a regular file readable and writable by its owner only (``chmod 600``:
a file others can read is refused, naming its mode), or, on a terminal, from a prompt
that does not echo. ``Credentials`` keeps the secret out of its ``repr``.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
import tomllib
from pathlib import Path

import msgspec


class CredentialsError(Exception):
    """The credentials cannot be had; the message says what to do."""


class Credentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    member: str
    user: str
    secret: str

    def __repr__(self) -> str:
        return f"Credentials(member={self.member!r}, user={self.user!r}, secret=<hidden>)"

    __str__ = __repr__

    @property
    def name(self) -> str:
        return f"{self.member}/{self.user}"


def read_private(path: str | Path, what: str) -> str:
    """The text of a file that holds a secret: a regular file of this user that no one
    else can read or write (``chmod 600``). CredentialsError names ``what`` (e.g.
    "credentials file ..."), the path and the remedy, never the content."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise CredentialsError(f"{what} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialsError(f"{what} is not a regular file")
    if st.st_mode & 0o077:
        raise CredentialsError(f"{what} can be read by others (mode {stat.S_IMODE(st.st_mode):03o}); make it "
                               f"private: chmod 600 {p}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise CredentialsError(f"{what} belongs to another user")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialsError(f"{what} cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})") from None


def from_file(path: str | Path) -> Credentials:
    """The credentials in a file readable by its owner only."""
    p = Path(path)
    text = read_private(p, f"credentials file {p}")
    try:
        raw = tomllib.loads(text)
        creds = msgspec.convert(raw, Credentials)
    except tomllib.TOMLDecodeError as e:
        raise CredentialsError(f"credentials file {p} is not valid TOML: {e}") from None
    except msgspec.ValidationError as e:
        raise CredentialsError(f"credentials file {p}: expected the keys member, user and secret: {e}") from None
    if not (creds.member and creds.user and creds.secret):
        raise CredentialsError(f"credentials file {p}: member, user and secret must not be empty")
    return creds


def write_file(path: str | Path, creds: Credentials, *, new: bool = False) -> Path:
    """Write a credentials file with owner-only permissions (tests and ``etx init``);
    ``new``: never replace a file (FileExistsError), as ``etx init`` writes them."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if new else os.O_TRUNC), 0o600)
    with os.fdopen(fd, "w") as f:
        for key in ("member", "user", "secret"):
            f.write(f"{key} = {_toml_string(getattr(creds, key))}\n")
    return p


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def obtain(path: str | None, who: str, default_member: str) -> Credentials:
    """Credentials from ``path`` when given, else asked on the terminal for ``who``
    (``USER`` or ``MEMBER/USER``; the member defaults to ``default_member``)."""
    if path:
        creds = from_file(path)
        if who and _split(who, default_member) != (creds.member, creds.user):
            raise CredentialsError(f"the credentials file is for {creds.name}, not {who}")
        return creds
    if not who:
        raise CredentialsError("name the user (--as USER) and give --credentials FILE or run on a terminal")
    member, user = _split(who, default_member)
    if not sys.stdin.isatty():
        raise CredentialsError(f"no secret for {member}/{user}: give --credentials FILE (chmod 600), "
                               "or run on a terminal to be asked")
    secret = getpass.getpass(f"secret of {member}/{user}: ")
    if not secret:
        raise CredentialsError("no secret given")
    return Credentials(member, user, secret)


def _split(who: str, default_member: str) -> tuple[str, str]:
    member, _, user = who.rpartition("/")
    return member or default_member, user
