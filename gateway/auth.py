"""Users, roles and secrets: scrypt-hashed secrets, logon checks and lockout.

Contract:
- A secret is stored only as ``scrypt$N$r$p$salt$hash`` (base64 salt and hash, the
  stdlib's ``hashlib.scrypt``); the plain secret is never stored or logged.
- ``Authenticator.check`` answers a logon with the user or a reason. It never says
  whether the member, the user or the secret was wrong (one reason for all three), and
  it verifies a dummy hash (of the configured users' cost) for unknown users so that
  the answer takes the same time.
- Five failures of one (member, user) within a minute lock it for ``lockout_s``; a
  locked user is refused even with the right secret. The lock is checked again when a
  logon's turn to hash comes and before it succeeds, so guesses sent all at once
  cannot outrun it. Every failure is logged for operators (member, user, peer, count),
  never with the secret; names the client chose are logged quoted (``%r``), so they
  cannot forge log lines.
- Unknown (member, user) pairs are tracked and locked like known ones (the answers
  must not tell them apart), at most ``tracked_max`` of each at once. Names longer
  than ``NAME_MAX`` cannot be configured, so such logons are refused at once and not
  tracked.
- The hashing runs in a worker thread (scrypt releases the GIL), at most
  ``concurrent_max`` at once: a burst of logons cannot stall the core or eat memory.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable

import msgspec

from gateway.protocol import GatewayReason, Role

log = logging.getLogger("etx.auth")

SCRYPT_N = 1 << 14  # 16 MiB of memory per hash with r=8: the common interactive setting
SCRYPT_R = 8
SCRYPT_P = 1
DKLEN = 32
SECRET_MAX = 256  # characters; a longer secret is refused before hashing
NAME_MAX = 64  # characters of a member id or user name (the configuration holds no longer one)


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P,
                salt: bytes | None = None) -> str:
    """The stored form of a secret."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=DKLEN, maxmem=256 * n * r + (1 << 20))
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, digest) of what ``hash_secret`` makes: a non-empty salt and a
    ``DKLEN``-byte digest. ValueError saying what is wrong for anything else, never
    quoting the salt or digest (they are what an offline guesser needs)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("expected scrypt$N$r$p$salt$hash")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        raise ValueError(f"N, r and p must be whole numbers, got {'$'.join(parts[1:4])!r}") from None
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or n > 1 << 20:
        raise ValueError(f"scrypt parameters out of range: N={n} r={r} p={p}")
    salt, digest = (_base64(text, name) for text, name in ((parts[4], "salt"), (parts[5], "hash")))
    if not salt:
        raise ValueError("the salt is empty")
    if len(digest) != DKLEN:
        raise ValueError(f"the hash is {len(digest)} bytes, expected {DKLEN}")
    return n, r, p, salt, digest


def _base64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error; its message would not say which part
        raise ValueError(f"the {name} is not valid base64") from None


def verify_secret(secret: str, stored: str) -> bool:
    n, r, p, salt, digest = parse_hash(stored)
    got = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=256 * n * r + (1 << 20))
    return hmac.compare_digest(got, digest)


class User(msgspec.Struct, kw_only=True):
    member: str
    user: str
    role: Role
    secret_hash: str

    def __repr__(self) -> str:
        # The hash stays out of logs and tracebacks: it is what an offline guesser needs.
        return f"User(member={self.member!r}, user={self.user!r}, role={self.role!r}, secret_hash=<hidden>)"

    __str__ = __repr__


_DUMMY_HASH = hash_secret("etx-dummy", salt=b"\0" * 16)
LOCKED_TEXT = "too many failed logons; try again later"
BAD_TEXT = "unknown member or user, or wrong secret"


class Authenticator:
    """Logon checks with lockout. See the module docstring."""

    def __init__(self, users: Iterable[User], *, failures_max: int = 5, window_s: float = 60.0,
                 lockout_s: float = 300.0, concurrent_max: int = 4, tracked_max: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.users: dict[tuple[str, str], User] = {}
        for u in users:
            parse_hash(u.secret_hash)  # refuse a bad config at start, not at first logon
            key = (u.member, u.user)
            if key in self.users:
                raise ValueError(f"user {u.user!r} of member {u.member!r} configured twice")
            self.users[key] = u
        self.failures_max = failures_max
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.tracked_max = tracked_max
        self.clock = clock
        self._failures: dict[tuple[str, str], list[float]] = {}  # recent failure times
        self._locked_until: dict[tuple[str, str], float] = {}
        self._slots = asyncio.Semaphore(concurrent_max)
        # Unknown users are checked against a hash of the same cost as the real ones, so
        # that the time of the answer does not tell them apart.
        params = collections.Counter(parse_hash(u.secret_hash)[:3] for u in self.users.values())
        self._dummy = _DUMMY_HASH
        if params:
            n, r, p = params.most_common(1)[0][0]
            if (n, r, p) != (SCRYPT_N, SCRYPT_R, SCRYPT_P):
                self._dummy = hash_secret("etx-dummy", n=n, r=r, p=p, salt=b"\0" * 16)

    def locked(self, member: str, user: str) -> bool:
        until = self._locked_until.get((member, user))
        if until is None:
            return False
        if self.clock() >= until:
            del self._locked_until[(member, user)]
            return False
        return True

    async def check(self, member: str, user: str, secret: str, peer: str = "") -> tuple[User | None, int, str]:
        """(user, 0, "") on success, else (None, reason, text)."""
        if len(member) > NAME_MAX or len(user) > NAME_MAX:
            # No user has such a name: nothing to lock, and nothing worth keeping in
            # memory or writing to the log at a peer's choice of length.
            log.warning("failed logon, a name longer than %d characters: peer=%s", NAME_MAX, peer)
            return None, GatewayReason.BAD_CREDENTIALS, BAD_TEXT
        key = (member, user)
        if self.locked(member, user):
            return self._refuse_locked(key, peer)
        found = self.users.get(key)
        ok = False
        if len(secret) <= SECRET_MAX:
            async with self._slots:
                # Checked again: failures may have locked the user while this waited.
                if self.locked(member, user):
                    return self._refuse_locked(key, peer)
                ok = await asyncio.get_running_loop().run_in_executor(
                    None, verify_secret, secret, found.secret_hash if found else self._dummy
                )
                # And again: a guess hashed beside the failure that locked the user
                # must not get in.
                if self.locked(member, user):
                    return self._refuse_locked(key, peer)
                if not ok or found is None:
                    self._fail(key, peer)
        else:
            self._fail(key, peer)
        if ok and found is not None:
            self._failures.pop(key, None)
            return found, 0, ""
        if self.locked(member, user):
            return None, GatewayReason.LOCKED, LOCKED_TEXT
        return None, GatewayReason.BAD_CREDENTIALS, BAD_TEXT

    def _refuse_locked(self, key: tuple[str, str], peer: str) -> tuple[None, int, str]:
        log.warning("logon refused, user locked: member=%r user=%r peer=%s", key[0], key[1], peer)
        return None, GatewayReason.LOCKED, LOCKED_TEXT

    def _fail(self, key: tuple[str, str], peer: str) -> None:
        now = self.clock()
        times = [t for t in self._failures.get(key, ()) if now - t < self.window_s]
        times.append(now)
        if len(self._failures) >= self.tracked_max and key not in self._failures:
            # Bounded: forget the oldest tracked key (dicts keep insertion order).
            self._failures.pop(next(iter(self._failures)))
        self._failures[key] = times
        log.warning("failed logon %d within %.0fs: member=%r user=%r peer=%s",
                    len(times), self.window_s, key[0], key[1], peer)
        if len(times) >= self.failures_max:
            locked = self._locked_until
            if len(locked) >= self.tracked_max and key not in locked:
                # Bounded: forget the expired locks, then (still full) the oldest one.
                for k in [k for k, until in locked.items() if until <= now]:
                    del locked[k]
                if len(locked) >= self.tracked_max:
                    locked.pop(next(iter(locked)))
            locked[key] = now + self.lockout_s
            del self._failures[key]
            log.warning("user locked for %.0fs: member=%r user=%r", self.lockout_s, key[0], key[1])
