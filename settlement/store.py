"""The registry store: the legal, persistent record of accounts, balances and postings.

One interface (``RegistryStore``), two databases: SQLite by default (WAL, BEGIN
IMMEDIATE, synchronous=FULL) and PostgreSQL for scale (psycopg 3, COPY for the bulk
rows). ``open_store(url_or_path)`` picks by prefix: ``postgresql://`` (or
``postgres://``) is PostgreSQL, anything else a SQLite file path.

Contract:
- ``migrate()`` brings the schema to the latest version (versioned, each step in its
  own transaction, recorded in ``schema_version``); it is safe to run on every start.
- ``write_batch(postings, last_seq)`` writes postings (legs inside), the resulting
  balances, account and obligation records, and the last settled engine sequence
  number in ONE transaction: a crash leaves all of it or none. ``last_seq`` means every
  posting with ``seq <= last_seq`` is in the store, so a restart resumes after it.
  Writing a posting that is already stored with the same content changes nothing; the
  same id with another content raises ``StoreError`` and the batch writes nothing.
- Constraints forbid negative balances, pending beyond the balance and duplicate
  posting ids, whatever the caller does.
- Every posting keeps what caused it (kind, trade id or command seq, actor), when
  (``ts``), and its full encoded content (``body``: the posting as msgpack, a tagged
  array, ``Posting`` or ``TradePosting`` as the ledger made it; a trade's legs are
  derived from its numbers when read): the account history is complete, and a posting
  reads back equal to the one written. An account's history is found through ``account_spans``: one
  row per account per batch naming the batch's range of postings, which are then
  filtered by their two parties (``subject``: the account a command concerns, or a
  trade's buyer; ``counterparty``: a trade's seller, a transfer's target) or their
  legs. One row per leg cost four times the rest of a trade's write, and indexes on
  the two parties still 40 %; a span per account and batch costs a fraction of a row
  per trade and keeps every posting reachable from every account it touches.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgspec

from engine.ledger import CASH
from settlement.ledger import BALANCE_MAX, Ledger
from settlement.messages import MEMBER_TYPES, AccountState, AnyPosting, ComplianceState, ObligationState, TradePosting
from settlement.structs import Fees, LedgerSnapshot
from settlement.units import format_yuan

SCHEMA_VERSION = 3
READ_CHUNK = 10_000  # postings read per query when streaming the whole record
SQLITE_CACHE_KIB = 65_536
SQLITE_CHECKPOINT_PAGES = 10_000

_encode = msgspec.msgpack.Encoder().encode
_COMPLIANCE = msgspec.msgpack.Decoder(ComplianceState)
_decode_posting = msgspec.msgpack.Decoder(AnyPosting).decode


class StoreError(Exception):
    """The store refused a write (a posting id reused with another content, a
    constraint) or is not usable; the failed transaction changed nothing."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written now (a connection lost, a server down, a
    disk error, a lock held too long): the same write may work later. The failed
    transaction changed nothing."""


def _migrations(dialect: str) -> list[list[str]]:
    """The schema, one list of statements per version."""
    blob = "BLOB" if dialect == "sqlite" else "BYTEA"
    big = "INTEGER" if dialect == "sqlite" else "BIGINT"
    without_rowid = " WITHOUT ROWID" if dialect == "sqlite" else ""
    return [
        [
            f"CREATE TABLE meta (key TEXT PRIMARY KEY, value {big} NOT NULL)",
            "INSERT INTO meta (key, value) VALUES ('last_seq', 0), ('next_no', 1)",
            "CREATE TABLE accounts (account TEXT PRIMARY KEY, holder_type INTEGER NOT NULL "
            "CHECK (holder_type BETWEEN 1 AND 7), name TEXT NOT NULL, status INTEGER NOT NULL CHECK (status IN (1, 2)))",
            f"CREATE TABLE balances (account TEXT NOT NULL, asset TEXT NOT NULL, balance {big} NOT NULL "
            "CHECK (balance >= 0), pending " + big + " NOT NULL CHECK (pending >= 0 AND pending <= balance), "
            f"PRIMARY KEY (account, asset)){without_rowid}",
            f"CREATE TABLE obligations (account TEXT NOT NULL, year INTEGER NOT NULL, required {big} NOT NULL, "
            f"surrendered {big} NOT NULL, ccer {big} NOT NULL, "
            "CHECK (0 <= ccer AND ccer <= surrendered AND surrendered <= required), PRIMARY KEY (account, year))",
            f"CREATE TABLE postings (no {big} PRIMARY KEY, posting_id TEXT NOT NULL UNIQUE, seq {big} NOT NULL, "
            f"ts {big} NOT NULL, kind TEXT NOT NULL, ref TEXT NOT NULL, actor TEXT NOT NULL, subject TEXT NOT NULL, "
            f"counterparty TEXT NOT NULL, text TEXT NOT NULL, body {blob} NOT NULL)",
            f"CREATE TABLE account_spans (account TEXT NOT NULL, first_no {big} NOT NULL, last_no {big} NOT NULL, "
            f"PRIMARY KEY (account, first_no)){without_rowid}",
            "CREATE INDEX postings_kind ON postings (kind, no) WHERE kind <> 'trade'",
            "CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL "
            "CHECK (role IN ('clerk', 'authority', 'admin')))",
        ],
        # 2: every balance an exact integer within BALANCE_MAX (SQLite would turn an
        # overflowing sum into a float); registry users are the exchange's staff users,
        # in its configuration, no longer a table of the store.
        (
            [
                "DROP TABLE users",
                f"CREATE TABLE balances_2 (account TEXT NOT NULL, asset TEXT NOT NULL, balance INTEGER NOT NULL "
                f"CHECK (typeof(balance) = 'integer' AND balance BETWEEN 0 AND {BALANCE_MAX}), pending INTEGER NOT NULL "
                f"CHECK (typeof(pending) = 'integer' AND pending >= 0 AND pending <= balance), "
                f"PRIMARY KEY (account, asset)) WITHOUT ROWID",
                "INSERT INTO balances_2 (account, asset, balance, pending) SELECT account, asset, balance, pending "
                "FROM balances",
                "DROP TABLE balances",
                "ALTER TABLE balances_2 RENAME TO balances",
            ]
            if dialect == "sqlite" else [
                "DROP TABLE users",
                f"ALTER TABLE balances ADD CONSTRAINT balance_max CHECK (balance <= {BALANCE_MAX})",
            ]
        ),
        # 3: staff accounts (holder type 8) and the compliance years (one record per
        # entity and year, msgpack-encoded as the ledger made it).
        [
            *(
                [
                    "CREATE TABLE accounts_3 (account TEXT PRIMARY KEY, holder_type INTEGER NOT NULL "
                    "CHECK (holder_type BETWEEN 1 AND 8), name TEXT NOT NULL, status INTEGER NOT NULL "
                    "CHECK (status IN (1, 2)))",
                    "INSERT INTO accounts_3 (account, holder_type, name, status) "
                    "SELECT account, holder_type, name, status FROM accounts",
                    "DROP TABLE accounts",
                    "ALTER TABLE accounts_3 RENAME TO accounts",
                ]
                if dialect == "sqlite" else [
                    "ALTER TABLE accounts DROP CONSTRAINT accounts_holder_type_check",
                    "ALTER TABLE accounts ADD CONSTRAINT accounts_holder_type_check CHECK (holder_type BETWEEN 1 AND 8)",
                ]
            ),
            f"CREATE TABLE compliance (account TEXT NOT NULL, year INTEGER NOT NULL, body {blob} NOT NULL, "
            "PRIMARY KEY (account, year))",
        ],
    ]


class RegistryStore(Protocol):
    url: str

    def migrate(self) -> int: ...
    def write_batch(self, postings: Sequence[AnyPosting], last_seq: int) -> int: ...
    def first_difference(self, postings: Sequence[AnyPosting]) -> str | None: ...
    def last_seq(self) -> int: ...
    def balances(self) -> list[tuple[str, str, int, int]]: ...
    def accounts(self) -> list[AccountState]: ...
    def obligations(self) -> list[ObligationState]: ...
    def compliance(self) -> list[ComplianceState]: ...
    def history(self, account: str, limit: int = 100) -> list[AnyPosting]: ...
    def postings(self, kinds: str = "all") -> Iterator[AnyPosting]: ...
    def kind_totals(self) -> list[tuple[str, str, int]]: ...
    def eod_count(self) -> int: ...
    def load_ledger(self, fees: Fees | None = None) -> Ledger: ...
    def close(self) -> None: ...


class _Pause:
    """Test hook for the crash test: with ETX_TEST_PAUSE_IN_BATCH=N the Nth batch
    written by this process stops inside its transaction, after half its postings,
    prints ``PAUSED <first posting id> <postings in the batch>`` on stderr and sleeps
    (to be killed there)."""

    batch = int(os.environ.get("ETX_TEST_PAUSE_IN_BATCH", "0") or 0)
    count = 0

    @classmethod
    def due(cls) -> bool:
        if not cls.batch:
            return False
        cls.count += 1
        return cls.count == cls.batch

    @staticmethod
    def stop(prep: _Prepared) -> None:
        first = prep.postings[0][1] if prep.postings else ""
        print("PAUSED", first, len(prep.postings), file=sys.stderr, flush=True)
        time.sleep(3600)


def parties(p: AnyPosting) -> tuple[str, str]:
    """(subject, counterparty) a posting is indexed by: for a trade its buyer and
    seller (the first two legs), for a command the account it concerns and the other
    account of its legs (a transfer's target)."""
    if type(p) is TradePosting:
        return p.buyer, p.seller
    if p.kind == "trade":
        return p.legs[0][0], p.legs[1][0]
    subject = p.subject
    for leg in p.legs:
        if leg[0] != subject:
            return subject, leg[0]
    return subject, ""


def describe(p: AnyPosting) -> str:
    """A posting in a few words: its kind, actor and legs (``M1 CNY +1000.00``)."""
    moves = []
    for account, asset, delta, pending in p.legs:
        amount = f"{'+' if delta >= 0 else '-'}{format_yuan(abs(delta)) if asset == CASH else abs(delta)}"
        moves.append(f"{account} {asset} {amount}" + (f" (pending {pending:+})" if pending else ""))
    who = f" by {p.actor}" if p.actor else ""
    return f"{p.kind}{who}: {', '.join(moves) or 'no legs'}"


class _Prepared:
    """The rows one batch writes, built once for either database."""

    __slots__ = ("postings", "balances", "accounts", "obligations", "compliance", "spans", "next_no")

    def __init__(self, postings: Sequence[AnyPosting], next_no: int) -> None:
        prows: list[tuple[Any, ...]] = []
        sums: dict[tuple[str, str], list[int]] = {}
        fee_sums: dict[str, int] = {}  # fee account -> cash received (trades' fee legs, summed per batch)
        accounts: dict[str, AccountState] = {}
        obligations: dict[tuple[str, int], ObligationState] = {}
        compliance: dict[tuple[str, int], ComplianceState] = {}
        touched: set[str] = set()
        no = next_no
        encode = _encode
        get, fee_get = sums.get, fee_sums.get  # bound once: they run per leg
        for p in postings:
            if type(p) is TradePosting:
                # The common case, per trade: the legs of TradePosting.legs (their one
                # definition), summed without building them; a test holds the two equal.
                buyer, seller, asset, qty = p.buyer, p.seller, p.instrument, p.qty
                trade_id = p.trade_id
                prows.append((no, f"T{trade_id}", p.seq, p.ts, "trade", str(trade_id), "", buyer, seller, "",
                              encode(p)))
                notional = p.price * qty
                trading, settlement, reserve = p.trading_fee, p.settlement_fee, p.reserve
                net = notional - trading - settlement
                for key, delta, pending in (((buyer, CASH), -(notional + trading + settlement), p.buyer_pending),
                                            ((seller, CASH), net, net), ((seller, asset), -qty, 0),
                                            ((buyer, asset), qty, qty)):
                    s = get(key)
                    if s is None:
                        sums[key] = [delta, pending]
                    else:
                        s[0] += delta
                        s[1] += pending
                if 2 * trading - reserve:
                    fee_sums[p.exchange_account] = fee_get(p.exchange_account, 0) + 2 * trading - reserve
                if reserve:
                    fee_sums[p.reserve_account] = fee_get(p.reserve_account, 0) + reserve
                if settlement:
                    fee_sums[p.registry_account] = fee_get(p.registry_account, 0) + 2 * settlement
                touched.add(buyer)
                no += 1
                continue
            subject, counterparty = parties(p)
            prows.append((no, p.posting_id, p.seq, p.ts, p.kind, p.ref, p.actor, subject, counterparty, p.text,
                          encode(p)))
            for leg in p.legs:
                key = leg[:2]
                s = get(key)
                if s is None:
                    sums[key] = [leg[2], leg[3]]
                else:
                    s[0] += leg[2]
                    s[1] += leg[3]
            if subject:
                touched.add(subject)
            if p.account is not None:
                accounts[p.account.account] = p.account
            if p.obligation is not None:
                obligations[p.obligation.account, p.obligation.year] = p.obligation
            for c in p.compliance:
                compliance[c.account, c.year] = c
                touched.add(c.account)
            no += 1
        for account, amount in fee_sums.items():
            s = get((account, CASH))
            if s is None:
                sums[account, CASH] = [amount, 0]
            else:
                s[0] += amount
        self.postings = prows
        self.balances = [(a, s, v[0], v[1]) for (a, s), v in sums.items()]
        touched.update(a for a, _ in sums)
        self.spans = [(a, next_no, no - 1) for a in touched] if no > next_no else []
        self.accounts = [(a.account, a.holder_type, a.name, a.status) for a in accounts.values()]
        self.obligations = [(o.account, o.year, o.required, o.surrendered, o.ccer) for o in obligations.values()]
        self.compliance = [(c.account, c.year, encode(c)) for c in compliance.values()]
        self.next_no = no


class _SqlStore:
    """What both databases share: the write protocol and the read queries. Dialects
    provide ``_query``, ``_transaction`` and the bulk statements."""

    url: str
    ph: str  # the parameter placeholder

    # --- dialect hooks ----------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _write_rows(self, prep: _Prepared, pause: bool) -> None:
        raise NotImplementedError

    def _is_duplicate(self, exc: Exception) -> bool:
        raise NotImplementedError

    def _errors(self) -> tuple[type[Exception], ...]:
        raise NotImplementedError

    def _unavailable(self) -> tuple[type[Exception], ...]:
        """The driver's errors that say the store cannot be used now (not a refusal)."""
        raise NotImplementedError

    def _dialect(self) -> str:
        raise NotImplementedError

    # --- schema -----------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply every migration above the stored version; returns the version.
        StoreUnavailable when the store cannot be written now."""
        try:
            return self._migrate()
        except self._unavailable() as exc:
            raise StoreUnavailable(f"the registry store is unavailable: {' '.join(str(exc).split())}") from exc

    def _migrate(self) -> int:
        self._begin()
        try:
            self._exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = self._query("SELECT max(version) FROM schema_version")
            self._commit()
        except BaseException:
            self._rollback()
            raise
        version = rows[0][0] or 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"store schema version {version} is newer than this program's {SCHEMA_VERSION}")
        for number, statements in enumerate(_migrations(self._dialect()), start=1):
            if number <= version:
                continue
            self._begin()
            try:
                # Another process may have migrated meanwhile: check again inside the lock.
                current = self._query("SELECT max(version) FROM schema_version")[0][0] or 0
                if current < number:
                    for sql in statements:
                        self._exec(sql)
                    self._exec(f"INSERT INTO schema_version (version) VALUES ({self.ph})", (number,))
                self._commit()
            except BaseException:
                self._rollback()
                raise
        return SCHEMA_VERSION

    # --- writes -----------------------------------------------------------------------

    def write_batch(self, postings: Sequence[AnyPosting], last_seq: int) -> int:
        """Write postings and ``last_seq`` in one transaction; returns how many
        postings were new. Raises StoreError when the store refuses them,
        StoreUnavailable when it cannot be written now."""
        try:
            return self._write_batch(postings, last_seq)
        except self._unavailable() as exc:
            raise StoreUnavailable(f"the registry store is unavailable: {' '.join(str(exc).split())}") from exc

    def _write_batch(self, postings: Sequence[AnyPosting], last_seq: int) -> int:
        pause = _Pause.due()
        errors = self._errors()
        try:
            return self._write(postings, last_seq, pause, dedupe=False)
        except errors as exc:
            if not self._is_duplicate(exc):
                raise StoreError(f"batch refused by the store: {exc}") from exc
        # Some postings are stored already (a restart re-sends what a crash cut off):
        # write the batch again without them, after checking they are the same.
        try:
            return self._write(postings, last_seq, pause=False, dedupe=True)
        except errors as exc:
            raise StoreError(f"batch refused by the store: {exc}") from exc

    def _write(self, postings: Sequence[AnyPosting], last_seq: int, pause: bool, dedupe: bool) -> int:
        self._begin()
        try:
            stored_last, next_no = self._meta_for_update()
            if dedupe:
                postings = self._without_stored(postings)
            prep = _Prepared(postings, next_no)
            self._write_rows(prep, pause)
            ph = self.ph
            if prep.balances:
                self._upsert_balances(prep.balances)
            if prep.spans:
                self._executemany(f"INSERT INTO account_spans (account, first_no, last_no) VALUES ({ph}, {ph}, {ph})",
                                  prep.spans)
            if prep.accounts:
                self._executemany(
                    f"INSERT INTO accounts (account, holder_type, name, status) VALUES ({ph}, {ph}, {ph}, {ph}) "
                    "ON CONFLICT (account) DO UPDATE SET holder_type = excluded.holder_type, "
                    "name = excluded.name, status = excluded.status", prep.accounts)
            if prep.obligations:
                self._executemany(
                    f"INSERT INTO obligations (account, year, required, surrendered, ccer) "
                    f"VALUES ({ph}, {ph}, {ph}, {ph}, {ph}) ON CONFLICT (account, year) DO UPDATE SET "
                    "required = excluded.required, surrendered = excluded.surrendered, ccer = excluded.ccer",
                    prep.obligations)
            if prep.compliance:
                self._executemany(
                    f"INSERT INTO compliance (account, year, body) VALUES ({ph}, {ph}, {ph}) "
                    "ON CONFLICT (account, year) DO UPDATE SET body = excluded.body", prep.compliance)
            self._executemany(f"UPDATE meta SET value = {ph} WHERE key = {ph}",
                              [(max(stored_last, last_seq), "last_seq"), (prep.next_no, "next_no")])
            self._commit()
            return len(postings)
        except BaseException:
            self._rollback()
            raise

    def _meta_for_update(self) -> tuple[int, int]:
        rows = dict(self._query("SELECT key, value FROM meta"))
        return int(rows["last_seq"]), int(rows["next_no"])

    def _without_stored(self, postings: Sequence[AnyPosting]) -> list[AnyPosting]:
        stored = self.stored_bodies([p.posting_id for p in postings])
        fresh = []
        for p in postings:
            body = stored.get(p.posting_id)
            if body is None:
                fresh.append(p)
            elif body != _encode(p):
                raise StoreError(f"posting {p.posting_id} is stored with a different content")
        return fresh

    def stored_bodies(self, ids: Sequence[str]) -> dict[str, bytes]:
        """posting id -> the stored body (msgpack, as written) of those ids that are stored."""
        stored: dict[str, bytes] = {}
        for i in range(0, len(ids), 500):
            part = list(ids[i:i + 500])
            marks = ", ".join([self.ph] * len(part))
            for pid, body in self._query(f"SELECT posting_id, body FROM postings WHERE posting_id IN ({marks})", part):
                stored[pid] = bytes(body)
        return stored

    def first_difference(self, postings: Sequence[AnyPosting]) -> str | None:
        """The first of ``postings`` (which the store should hold, e.g. those a replay of
        the journal made again up to the store's last settled seq) that it does not
        hold as they are, described in one line; None when it holds them all."""
        for i in range(0, len(postings), READ_CHUNK):
            part = postings[i:i + READ_CHUNK]
            stored = self.stored_bodies([p.posting_id for p in part])
            for p in part:
                body = stored.get(p.posting_id)
                if body is None:
                    return f"posting {p.posting_id} (seq {p.seq}: {describe(p)}) is missing from the store"
                if body != _encode(p):
                    return (f"posting {p.posting_id} (seq {p.seq}) differs: the store has {describe(_decode_posting(body))}, "
                            f"the journal gives {describe(p)}")
        return None

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _upsert_balances(self, rows: list[tuple[str, str, int, int]]) -> None:
        raise NotImplementedError

    # --- reads ------------------------------------------------------------------------

    def last_seq(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE key = 'last_seq'")[0][0])

    def balances(self) -> list[tuple[str, str, int, int]]:
        """(account, asset, balance, pending) for every entry, sorted. A value that is
        not an integer (which the schema forbids) raises StoreError naming it."""
        rows = self._query("SELECT account, asset, balance, pending FROM balances")
        for a, s, b, p in rows:
            if type(b) is not int or type(p) is not int:
                raise StoreError(f"{a} {s}: the store holds balance {b!r} and pending {p!r}, which are not both "
                                 "integers")
        return sorted(rows)

    def accounts(self) -> list[AccountState]:
        rows = sorted(self._query("SELECT account, holder_type, name, status FROM accounts"))
        return [AccountState(a, int(t), n, int(s)) for a, t, n, s in rows]

    def obligations(self) -> list[ObligationState]:
        rows = sorted(self._query("SELECT account, year, required, surrendered, ccer FROM obligations"))
        return [ObligationState(a, int(y), int(r), int(s), int(c)) for a, y, r, s, c in rows]

    def compliance(self) -> list[ComplianceState]:
        rows = sorted(self._query("SELECT account, year, body FROM compliance"))
        return [_COMPLIANCE.decode(bytes(b)) for _, _, b in rows]

    def history(self, account: str, limit: int = 100) -> list[AnyPosting]:
        """The account's latest postings (commands about it, trades and transfers it
        is a party to, days that freed its quantities, fees it received), oldest first."""
        ph = self.ph
        if limit <= 0:
            return []
        fee = self._query(f"SELECT holder_type FROM accounts WHERE account = {ph}", (account,))
        everything = bool(fee) and int(fee[0][0]) not in MEMBER_TYPES  # system accounts: legs in every trade
        spans = self._query(f"SELECT first_no, last_no FROM account_spans WHERE account = {ph} "
                            "ORDER BY first_no DESC", (account,))
        found: list[AnyPosting] = []
        for first, last in spans:
            rows = self._query(
                f"SELECT body FROM postings WHERE no BETWEEN {ph} AND {ph} AND (subject = {ph} OR counterparty = {ph} "
                f"OR kind = 'eod' OR {ph}) ORDER BY no DESC", (first, last, account, account, everything))
            for (body,) in rows:
                p = _decode_posting(bytes(body))
                if p.subject == account or any(leg[0] == account for leg in p.legs):
                    found.append(p)
                    if len(found) == limit:
                        return found[::-1]
        return found[::-1]

    def postings(self, kinds: str = "all") -> Iterator[AnyPosting]:
        """Every posting in the order written, read in chunks; ``kinds="commands"``
        skips trades (through the kind index)."""
        where = "AND kind <> 'trade'" if kinds == "commands" else ""
        last = 0
        while True:
            rows = self._query(
                f"SELECT no, body FROM postings WHERE no > {self.ph} {where} ORDER BY no LIMIT {READ_CHUNK}", (last,))
            if not rows:
                return
            for _, body in rows:
                yield _decode_posting(bytes(body))
            last = rows[-1][0]

    def kind_totals(self) -> list[tuple[str, str, int]]:
        """(posting kind, asset, sum of balance deltas) over every posting but trades
        (whose legs sum to zero per asset by construction; the audit checks them)."""
        sums: dict[tuple[str, str], int] = {}
        for p in self.postings("commands"):
            for _, asset, delta, _ in p.legs:
                key = (p.kind, asset)
                sums[key] = sums.get(key, 0) + delta
        return sorted((k, a, n) for (k, a), n in sums.items())

    def eod_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM postings WHERE kind = 'eod'")[0][0])

    def load_ledger(self, fees: Fees | None = None) -> Ledger:
        """A ledger with the store's accounts, balances, T+1 quantities and
        obligations, and no holds (no order is open). It only reads: the system
        accounts the fees name are in it even when the store does not hold them yet."""
        ledger = Ledger(fees)
        ledger.take_postings()
        stored = {a.account: a for a in self.accounts()}
        accounts = [*stored.values(), *(a for name, a in ledger.accounts.items() if name not in stored)]
        totals: dict[tuple[str, str], int] = {}
        for kind, asset, amount in self.kind_totals():
            counter = {"allocate": "issued", "preallocate": "issued", "approve": "issued", "surrender": "surrendered",
                       "retire": "retired", "close": "expired", "deposit": "deposited",
                       "withdraw": "withdrawn"}.get(kind)
            if counter is not None:
                key = (counter, asset)
                totals[key] = totals.get(key, 0) + (amount if counter in ("issued", "deposited") else -amount)
        entries = []
        for account, asset, balance, pending in self.balances():
            cash = asset == CASH
            entries.append((account, asset, balance, 0, 0 if cash else pending, pending if cash else 0))
        snap = LedgerSnapshot(
            self.eod_count() + 1, sorted(accounts, key=lambda a: a.account), entries, self.obligations(),
            [(c, a, n) for (c, a), n in sorted(totals.items())], self.compliance(),
        )
        ledger.restore(snap, keep_holds=False)
        return ledger


class SqliteStore(_SqlStore):
    """A SQLite file in WAL mode; every commit is durable (synchronous=FULL)."""

    ph = "?"

    def __init__(self, path: str) -> None:
        self.url = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {path!r}: {exc}") from exc
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # every commit is on disk before it returns
        # A batch touches index pages all over the party indexes: keep them cached (64 MiB)
        # and checkpoint the WAL into the database less often (every 10,000 pages);
        # neither changes durability, both raise throughput by about a third.
        self.db.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        self.db.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
        self._known: set[tuple[str, str]] = set()  # balance rows known to exist
        self._after_commit: list[tuple[str, str]] = []

    def _dialect(self) -> str:
        return "sqlite"

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, params).fetchall()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.db.execute(sql, params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)

    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self.db.execute("COMMIT")
        if self._after_commit:
            self._known.update(self._after_commit)
            self._after_commit = []

    def _rollback(self) -> None:
        self._after_commit = []
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def _errors(self) -> tuple[type[Exception], ...]:
        return (sqlite3.IntegrityError,)

    def _unavailable(self) -> tuple[type[Exception], ...]:
        return (sqlite3.OperationalError, OSError)

    def _is_duplicate(self, exc: Exception) -> bool:
        return "UNIQUE constraint failed: postings.posting_id" in str(exc)

    def _write_rows(self, prep: _Prepared, pause: bool) -> None:
        db = self.db
        sql = "INSERT INTO postings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        if pause:
            half = len(prep.postings) // 2
            db.executemany(sql, prep.postings[:half])
            _Pause.stop(prep)
            db.executemany(sql, prep.postings[half:])
        else:
            db.executemany(sql, prep.postings)

    def _upsert_balances(self, rows: list[tuple[str, str, int, int]]) -> None:
        # SQLite checks CHECK constraints on the row an upsert proposes, before the
        # conflict turns it into an update; so create missing rows at zero, then add.
        # Rows are never deleted, so a row once seen exists for good (``_known``).
        db = self.db
        known = self._known
        new = [(a, s) for a, s, _, _ in rows if (a, s) not in known]
        if new:
            db.executemany("INSERT OR IGNORE INTO balances (account, asset, balance, pending) VALUES (?, ?, 0, 0)", new)
            self._after_commit = new
        db.executemany("UPDATE balances SET balance = balance + ?, pending = pending + ? "
                       "WHERE account = ? AND asset = ?", [(d, p, a, s) for a, s, d, p in rows])

    def close(self) -> None:
        self.db.close()


class PostgresStore(_SqlStore):
    """A PostgreSQL database through psycopg 3; bulk rows go in with COPY."""

    ph = "%s"

    def __init__(self, dsn: str) -> None:
        import psycopg  # imported here so SQLite users do not need the driver

        self.url = dsn
        self._psycopg = psycopg
        try:
            self.db = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            # One line that names the server and never the password: libpq's reason can
            # quote the URL back ('invalid percent-encoded token: "..."').
            import re
            from urllib.parse import unquote

            try:
                info = psycopg.conninfo.conninfo_to_dict(dsn)
            except psycopg.Error:
                info = {}
            host = str(info.get("host") or os.environ.get("PGHOST") or "")
            port = str(info.get("port") or os.environ.get("PGPORT") or 5432)
            where = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}") if host else f"the local socket, port {port}"
            # libpq says 'connection to server at "HOST", port PORT failed: REASON'; the address is said above.
            reason = " ".join(str(exc).split("\n", 1)[0].rpartition(" failed: ")[2].split()) or type(exc).__name__
            hidden = {str(info.get("password") or "")}
            for pair in re.findall(r"://[^:/@?#]*:([^@/?#]*)@|[?&]password=([^&#]*)", dsn):
                hidden.update(pair, map(unquote, pair))
            for secret in hidden - {""}:
                reason = reason.replace(secret, "***")
            raise StoreUnavailable(f"cannot connect to the PostgreSQL registry at {where}: {reason}") from exc

    def _dialect(self) -> str:
        return "postgresql"

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, params).fetchall()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.db.execute(sql, params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.db.cursor() as cur:
            cur.executemany(sql, rows)

    def _begin(self) -> None:
        self.db.execute("BEGIN")

    def _commit(self) -> None:
        self.db.execute("COMMIT")

    def _rollback(self) -> None:
        if self.db.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
            self.db.execute("ROLLBACK")

    def _meta_for_update(self) -> tuple[int, int]:
        # The row lock makes writers from several processes take turns, like BEGIN IMMEDIATE.
        rows = dict(self._query("SELECT key, value FROM meta ORDER BY key FOR UPDATE"))
        return int(rows["last_seq"]), int(rows["next_no"])

    def _errors(self) -> tuple[type[Exception], ...]:
        return (self._psycopg.errors.IntegrityError,)

    def _unavailable(self) -> tuple[type[Exception], ...]:
        return (self._psycopg.OperationalError, self._psycopg.InterfaceError, OSError)

    def _is_duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation) and "posting_id" in str(exc)

    def _write_rows(self, prep: _Prepared, pause: bool) -> None:
        with self.db.cursor() as cur:
            with cur.copy("COPY postings (no, posting_id, seq, ts, kind, ref, actor, subject, counterparty, text, "
                          "body) FROM STDIN") as copy:
                write = copy.write_row
                half = len(prep.postings) // 2 if pause else -1
                for i, row in enumerate(prep.postings):
                    if i == half:
                        _Pause.stop(prep)
                    write(row)

    def _upsert_balances(self, rows: list[tuple[str, str, int, int]]) -> None:
        # Like SQLite, PostgreSQL checks the row an upsert proposes: zero rows first, then add.
        accounts, assets, deltas, pendings = (list(c) for c in zip(*rows, strict=True))
        self.db.execute(
            "INSERT INTO balances (account, asset, balance, pending) "
            "SELECT a, s, 0, 0 FROM unnest(%s::text[], %s::text[]) AS u(a, s) ON CONFLICT DO NOTHING",
            (accounts, assets))
        self.db.execute(
            "UPDATE balances AS b SET balance = b.balance + u.d, pending = b.pending + u.p "
            "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) AS u(a, s, d, p) "
            "WHERE b.account = u.a AND b.asset = u.s",
            (accounts, assets, deltas, pendings))

    def close(self) -> None:
        self.db.close()


def open_store(url_or_path: str) -> SqliteStore | PostgresStore:
    """PostgreSQL for ``postgresql://`` / ``postgres://`` URLs, else a SQLite file."""
    if url_or_path.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url_or_path)
    return SqliteStore(url_or_path)
