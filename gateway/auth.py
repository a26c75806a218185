"""Users, roles and secrets: scrypt-hashed secrets, logon checks and lockout.

Contract:
- A secret is stored only as ``scrypt$N$r$p$salt$hash`` (base64 salt and hash, the
  stdlib's ``hashlib.scrypt``); the plain secret is never stored or logged.
- ``EXAMPLE_SECRETS``: the public secrets of etx.example.toml, by the hashes it
  publishes (``etx serve`` refuses a configuration holding one, unless told ``--demo``).
- ``Authenticator.check`` answers a logon with the user or a reason. It never says
  whether the member, the user or the secret was wrong (one reason for all three), and
  it verifies a dummy hash (of the configured users' cost) for unknown users so that
  the answer takes the same time.
- Failures are counted per user *and source address*: ``failures_max`` failures of
  one (member, user) from one address within ``window_s`` lock that user out *from
  that address* for ``lockout_s`` (refused even with the right secret), so a stranger
  guessing from elsewhere cannot lock the real user out. The lock is checked again when
  a logon's turn to hash comes and before it succeeds, so guesses sent all at once
  cannot outrun it. Each lockout is logged and reported to ``on_lockout`` (the
  operators' alerts); ``unlock(member, user)`` lifts a user's lockouts (an operator's
  command).
- A global backstop per user: more than ``backstop`` failures of one user within
  ``window_s``, from any addresses, slow every further logon of that user by
  ``backstop_delay_s`` (guessing from many addresses gets slow) without locking anyone.
- Every failure is logged for operators (member, user, peer, count), never with the
  secret; names the client chose are logged quoted (``%r``), so they cannot forge log
  lines.
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

from engine.messages import NAME_MAX
from gateway.protocol import SECRET_MAX, GatewayReason, Role

log = logging.getLogger("etx.auth")

SCRYPT_N = 1 << 14  # 16 MiB of memory per hash with r=8: the common interactive setting
SCRYPT_R = 8
SCRYPT_P = 1
DKLEN = 32
# Characters of a secret, and of a member id or user name (the configuration holds no
# longer one): the protocol's limits, defined once with the messages.

# The secrets of etx.example.toml, by the hashes that file publishes of them. Both are
# public, so a configuration holding one of these hashes lets anyone log on: etx serve
# refuses it (unless told --demo), and etx serve --hash-secret refuses these secrets. A
# hash is compared as a string (free at every start); a fresh hash of one of these
# secrets is refused when it is made. tests/tools/test_init.py checks each pair against
# the example file.
EXAMPLE_SECRETS: dict[str, str] = {
    "scrypt$16384$8$1$1bH3zACZY/qoAhGYBm2Q+w==$y7P786lG/xhahORDepy+okPX/1sq7VTdLgQ9amo0v4s=": "change-me-trader-1",
    "scrypt$16384$8$1$XlUJbJ1eS0Tb6KG086yd0Q==$ipyRUcqs9PqnX/12I7jvhj84EVFtgaIfHoDkCyLtkpY=": "change-me-trader-2",
    "scrypt$16384$8$1$lppTDCaPpGPnWPpLoBgVMQ==$p3fIYluey721CMYS5hRrMewvpZ0YdFr9qGbQw9EDHNI=": "change-me-operator",
    "scrypt$16384$8$1$22D8NC4Y1FzddE9WkiMosQ==$CXZM76iPgDPNDJi/QOKVteKgcCHWyrZrADxF+9Ep+BU=": "change-me-clerk",
    "scrypt$16384$8$1$x75D934cqZ/xZcUuyEdOhg==$14S4WWhKnmbbTJanvKqr/ZuaTYTmlz5WsaiutWi0LpQ=": "change-me-authority",
}


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


Key = tuple[str, str, str]  # (member, user, source address)


class Authenticator:
    """Logon checks with lockout. See the module docstring."""

    def __init__(self, users: Iterable[User], *, failures_max: int = 5, window_s: float = 60.0,
                 lockout_s: float = 300.0, concurrent_max: int = 4, tracked_max: int = 100_000,
                 backstop: int | None = None, backstop_delay_s: float = 1.0,
                 on_lockout: Callable[[str, str, str], None] | None = None,
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
        self.backstop = backstop if backstop is not None else 20 * failures_max
        self.backstop_delay_s = backstop_delay_s
        self.on_lockout = on_lockout
        self.clock = clock
        self._failures: dict[Key, list[float]] = {}  # recent failure times per user and address
        self._locked_until: dict[Key, float] = {}
        self._user_failures: dict[tuple[str, str], collections.deque[float]] = {}  # the backstop's count
        self._slots = asyncio.Semaphore(concurrent_max)
        # Unknown users are checked against a hash of the same cost as the real ones, so
        # that the time of the answer does not tell them apart.
        params = collections.Counter(parse_hash(u.secret_hash)[:3] for u in self.users.values())
        self._dummy = _DUMMY_HASH
        if params:
            n, r, p = params.most_common(1)[0][0]
            if (n, r, p) != (SCRYPT_N, SCRYPT_R, SCRYPT_P):
                self._dummy = hash_secret("etx-dummy", n=n, r=r, p=p, salt=b"\0" * 16)

    def locked(self, member: str, user: str, host: str = "") -> bool:
        key = (member, user, host)
        until = self._locked_until.get(key)
        if until is None:
            return False
        if self.clock() >= until:
            del self._locked_until[key]
            return False
        return True

    def unlock(self, member: str, user: str) -> int:
        """Lift the user's lockouts, from every address, and forget its failures;
        returns how many lockouts were lifted."""
        now = self.clock()
        keys = [k for k in self._locked_until if k[:2] == (member, user)]
        lifted = sum(1 for k in keys if self._locked_until[k] > now)
        for k in keys:
            del self._locked_until[k]
        for k in [k for k in self._failures if k[:2] == (member, user)]:
            del self._failures[k]
        self._user_failures.pop((member, user), None)
        return lifted

    def slowed(self, member: str, user: str) -> bool:
        """Whether the global backstop slows this user's logons now."""
        times = self._user_failures.get((member, user))
        if not times:
            return False
        horizon = self.clock() - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
        return len(times) > self.backstop

    async def check(self, member: str, user: str, secret: str, peer: str = "",
                    host: str = "") -> tuple[User | None, int, str]:
        """(user, 0, "") on success, else (None, reason, text). ``host`` is the source
        address the lockout counts by; ``peer`` (address and port) is for the log."""
        if len(member) > NAME_MAX or len(user) > NAME_MAX:
            # No user has such a name: nothing to lock, and nothing worth keeping in
            # memory or writing to the log at a peer's choice of length.
            log.warning("failed logon, a name longer than %d characters: peer=%s", NAME_MAX, peer)
            return None, GatewayReason.BAD_CREDENTIALS, BAD_TEXT
        key = (member, user, host)
        if self.locked(*key):
            return self._refuse_locked(key, peer)
        if self.slowed(member, user):
            await asyncio.sleep(self.backstop_delay_s)
        found = self.users.get((member, user))
        ok = False
        if len(secret) <= SECRET_MAX:
            async with self._slots:
                # Checked again: failures may have locked the user while this waited.
                if self.locked(*key):
                    return self._refuse_locked(key, peer)
                ok = await asyncio.get_running_loop().run_in_executor(
                    None, verify_secret, secret, found.secret_hash if found else self._dummy
                )
                # And again: a guess hashed beside the failure that locked the user
                # must not get in.
                if self.locked(*key):
                    return self._refuse_locked(key, peer)
                if not ok or found is None:
                    self._fail(key, peer)
        else:
            self._fail(key, peer)
        if ok and found is not None:
            self._failures.pop(key, None)
            return found, 0, ""
        if self.locked(*key):
            return None, GatewayReason.LOCKED, LOCKED_TEXT
        return None, GatewayReason.BAD_CREDENTIALS, BAD_TEXT

    def _refuse_locked(self, key: Key, peer: str) -> tuple[None, int, str]:
        log.warning("logon refused, user locked from this address: member=%r user=%r peer=%s", key[0], key[1], peer)
        return None, GatewayReason.LOCKED, LOCKED_TEXT

    def _fail(self, key: Key, peer: str) -> None:
        now = self.clock()
        times = [t for t in self._failures.get(key, ()) if now - t < self.window_s]
        times.append(now)
        if len(self._failures) >= self.tracked_max and key not in self._failures:
            # Bounded: forget the oldest tracked key (dicts keep insertion order).
            self._failures.pop(next(iter(self._failures)))
        self._failures[key] = times
        member, user, host = key
        everywhere = self._user_failures.get((member, user))
        if everywhere is None:
            if len(self._user_failures) >= self.tracked_max:
                self._user_failures.pop(next(iter(self._user_failures)))
            everywhere = self._user_failures[member, user] = collections.deque(maxlen=self.backstop + 1)
        was_slowed = len(everywhere) > self.backstop
        everywhere.append(now)
        log.warning("failed logon %d within %.0fs: member=%r user=%r peer=%s",
                    len(times), self.window_s, member, user, peer)
        if not was_slowed and self.slowed(member, user):
            log.warning("more than %d failed logons of member=%r user=%r within %.0fs: its logons are slowed",
                        self.backstop, member, user, self.window_s)
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
            log.warning("user locked for %.0fs from %s: member=%r user=%r", self.lockout_s, host or "?", member, user)
            if self.on_lockout is not None:
                self.on_lockout(member, user, host)
