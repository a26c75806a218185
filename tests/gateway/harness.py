"""A running exchange for gateway tests: a funded ``settlement.Exchange`` behind a real
``Server`` on 127.0.0.1 (port 0), users of every role, and ``Client`` helpers.

Members M1, M2 and M3 trade CEA24 (reference price CNY 100.00, so 10,000 fen, band
+-10 %); each opens with ``CASH`` fen and ``ALLOWANCES`` t. Secrets are hashed with a
small scrypt cost so that tests log on quickly; the format is the production one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from engine import ALWAYS_OPEN, Instrument, Sequencer
from gateway.auth import Authenticator, User, hash_secret
from gateway.client import Client
from gateway.config import SessionSection
from gateway.protocol import Report, Role
from gateway.server import Server
from settlement import Allocate, Deposit, Exchange, Fees, HolderType, Ledger, OpenAccount

SYMBOL = "CEA24"
REF = 10_000
CASH = 100_000_000  # fen: CNY 1,000,000
ALLOWANCES = 50_000  # t
MEMBERS = ("M1", "M2", "M3")
OPERATOR_MEMBER = "EXCH"
SECRET = "s3cret-pass"
TEST_N = 1 << 10  # scrypt cost for tests only

USERS = [
    ("M1", "t1", Role.TRADER), ("M1", "t1b", Role.TRADER), ("M1", "ro", Role.READ_ONLY),
    ("M2", "t2", Role.TRADER), ("M3", "t3", Role.TRADER),
    (OPERATOR_MEMBER, "op", Role.OPERATOR), (OPERATOR_MEMBER, "clerk", Role.CLERK),
    (OPERATOR_MEMBER, "auth", Role.AUTHORITY),
]
_HASH = hash_secret(SECRET, n=TEST_N)


def make_exchange(members: tuple[str, ...] = MEMBERS, cash: int = CASH, allowances: int = ALLOWANCES,
                  fees: Fees | None = None, unfunded: tuple[str, ...] = ()) -> Exchange:
    """An exchange whose members have opened accounts; all but ``unfunded`` hold
    ``cash`` and ``allowances``."""
    exchange = Exchange([Instrument(symbol=SYMBOL, ref_price=REF)], Ledger(fees or Fees()), schedule=ALWAYS_OPEN)
    seq = Sequencer(clock=lambda: 1)
    cmds: list[Any] = []
    for m in members:
        cmds.append(OpenAccount("setup", m, int(HolderType.COMPLIANCE), m))
        if m in unfunded:
            continue
        if cash:
            cmds.append(Deposit("setup", m, cash))
        if allowances:
            cmds.append(Allocate("setup", "AUTHORITY", m, SYMBOL, allowances))
    for c in cmds:
        seq.stamp(c)
    exchange.apply_batch(cmds)
    assert all(type(e).__name__ in ("RegistryDone", "StatusChanged") for e in exchange.out), exchange.out
    exchange.out.clear()
    exchange.ledger.take_postings()
    return exchange


class Harness:
    """``async with Harness() as h:`` a listening server; ``await h.client("M1", "t1")``."""

    def __init__(self, cfg: SessionSection | None = None, exchange: Exchange | None = None,
                 ssl: Any = None, *, members: tuple[str, ...] = MEMBERS,
                 users: list[tuple[str, str, Role]] | None = None, **auth: Any) -> None:
        """``members`` and ``users`` replace M1..M3 and ``USERS`` (each user's secret is
        ``SECRET``); the exchange then opens and funds those members."""
        self.ssl = ssl  # the server's SSLContext, for TLS
        self.exchange = exchange or make_exchange(members)
        self.cfg = cfg or SessionSection()
        users = USERS if users is None else users
        self.auth = Authenticator([User(member=m, user=u, role=r, secret_hash=_HASH) for m, u, r in users], **auth)
        self.server = Server(self.exchange, self.auth, members, self.cfg, operator_member=OPERATOR_MEMBER, tick_s=0)
        self.port = 0
        self.clients: list[Client] = []

    async def __aenter__(self) -> Harness:
        _, self.port = await self.server.start("127.0.0.1", 0, self.ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            await c.close()
        await self.server.stop()

    def new_client(self, member: str, user: str, secret: str = SECRET, **kw: Any) -> Client:
        c = Client("127.0.0.1", self.port, member, user, secret, **kw)
        self.clients.append(c)
        return c

    async def client(self, member: str, user: str, **kw: Any) -> Client:
        c = self.new_client(member, user, **kw)
        await c.connect()
        return c

    async def settle(self) -> None:
        """Let queued work through the core (a round trip per connected client)."""
        for c in self.clients:
            if c.connected:
                await c.query_instruments()

    def check(self) -> None:
        self.exchange._check()
        self.server._check()


def run(coro_fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Run an async test function on a fresh event loop."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        return asyncio.run(asyncio.wait_for(coro_fn(*args, **kw), 60))

    return wrapper


async def body_of(client: Client, kind: type, timeout: float = 5.0) -> Any:
    """The body of the next Report whose body is a ``kind``."""
    rep = await client.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, kind), timeout)
    return rep.body


async def drain(client: Client, quiet: float = 0.2) -> list[Any]:
    """Everything that arrives until nothing has come for ``quiet`` seconds."""
    out = []
    while True:
        try:
            msg = await client.next(quiet)
        except TimeoutError:
            return out
        if msg is None:
            return out
        out.append(msg)
