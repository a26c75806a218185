"""The audit of a data folder: is the registry store exactly the projection of the journal?

``audit_folder(data_dir, cfg, store)`` returns every difference found (empty: clean):

1. The store against itself (``settlement.audit``): every posting applies, trades are
   delivery versus payment, the tables equal the postings, each asset is conserved,
   postings are in seq order and none is past the settled seq.
2. The store against the exchange's own history. The core is rebuilt from the oldest
   point the journal still reaches: an empty core when the journal starts at seq 1,
   else the oldest snapshot the journal continues (its recorded state hash checked).
   Replaying the journal from there makes every posting again; each is compared with
   the store's posting in the same place, in seq order, field by field: a posting
   changed, missing, added or moved is named, with the accounts, assets and amounts
   that differ.
3. The store's postings up to that starting point, replayed into a fresh ledger, must
   give the snapshot's ledger: every balance, pending quantity, account, obligation
   and supply counter. A posting changed before the snapshot and "balanced" by
   changing others shows here.

Postings the journal makes past the store's last settled seq are not differences: the
settler writes them shortly (a running exchange), or the next start does (after a
crash). The audit only reads: the journal, the snapshots and the store; it takes no
lock and works beside a running exchange.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from engine.journal import JournalCorrupt, command_decoder, list_segments, read_journal
from engine.ledger import CASH
from engine.snapshot import SnapshotCorrupt, SnapshotStore, list_snapshots
from gateway.recovery import JOURNAL_DIR, SNAPSHOT_DIR, core_factory, journal_command_types, snapshot_type_of
from settlement.audit import DIFFERENCES_MAX, audit
from settlement.ledger import Ledger, LedgerError
from settlement.messages import AnyPosting
from settlement.store import RegistryStore, describe
from settlement.structs import LedgerSnapshot

_encode = msgspec.msgpack.Encoder().encode


class FolderAudit(msgspec.Struct):
    differences: list[str]
    base: str  # where the rebuilt history starts: "seq 0" or the snapshot's file name
    base_seq: int
    journal_last: int
    settled: int  # the store's last settled seq
    compared: int  # postings compared one by one with the journal's
    unsettled: int  # postings the journal makes past the store's settled seq

    def summary(self) -> str:
        late = f"; {self.unsettled} postings after seq {self.settled} not settled yet" if self.unsettled else ""
        return (f"{self.compared} postings compared with the journal (seq {self.base_seq + 1}-{self.journal_last}, "
                f"from {self.base}), the store settled through seq {self.settled}{late}")


def audit_folder(data_dir: str | Path, cfg: Any, store: RegistryStore) -> FolderAudit:
    data = Path(data_dir)
    diffs: list[str] = []
    overflow = [0]

    def report(text: str) -> None:
        if len(diffs) < DIFFERENCES_MAX:
            diffs.append(text)
        else:
            overflow[0] += 1

    make_core = core_factory(cfg)
    fees = make_core().ledger.fees
    for text in audit(store, fees=fees):
        report(f"store: {text}")
    settled = store.last_seq()
    try:
        core, base, base_seq = _base(data, make_core)
    except (JournalCorrupt, SnapshotCorrupt, ValueError) as e:
        report(f"journal: cannot rebuild the exchange's history: {e}")
        return FolderAudit(diffs, "", 0, 0, settled, 0, 0)
    base_ledger: LedgerSnapshot | None = core.ledger.snapshot() if base_seq else None
    regenerated = _replay(data, core, base_seq)
    prefix = Ledger(fees)
    prefix.take_postings()
    compared = unsettled = 0
    stored = store.postings()
    mine: AnyPosting | None = None
    try:
        for theirs in stored:
            if base_seq and theirs.seq <= base_seq:
                try:
                    prefix.apply_posting(theirs)
                except LedgerError as e:
                    report(f"posting {theirs.posting_id} (seq {theirs.seq}) does not apply: {e}")
                continue
            mine = next(regenerated, None)
            if mine is None:
                report(f"posting {theirs.posting_id} (seq {theirs.seq}: {describe(theirs)}) is in the store, "
                       "the journal has no such posting")
                continue
            compared += 1
            if _encode(mine) != _encode(theirs):
                report(_difference(theirs, mine))
        for mine in regenerated:
            if mine.seq <= settled:
                report(f"posting {mine.posting_id} (seq {mine.seq}: {describe(mine)}) is missing from the store, "
                       f"which has settled through seq {settled}")
            else:
                unsettled += 1
    except (JournalCorrupt, LedgerError) as e:
        report(f"journal: the replay stopped: {e}")
    if settled > core.last_seq:
        report(f"the store has settled through seq {settled} but the journal ends at seq {core.last_seq}")
    if base_ledger is not None:
        _compare_prefix(prefix, base_ledger, base_seq, report)
    if overflow[0]:
        diffs.append(f"... and {overflow[0]} more differences")
    return FolderAudit(diffs, base, base_seq, core.last_seq, settled, compared, unsettled)


def _base(data: Path, make_core: Any) -> tuple[Any, str, int]:
    """The core at the oldest point the journal continues: (core, its name, its seq)."""
    journal_dir = data / JOURNAL_DIR
    segments = list_segments(journal_dir) if journal_dir.is_dir() else []
    first = segments[0][0] if segments else None
    if first is None or first == 1:
        return make_core(), "an empty core", 0
    snap_dir = data / SNAPSHOT_DIR
    reasons = []
    snaps = SnapshotStore(snap_dir, writer=False)
    for seq, path in list_snapshots(snap_dir) if snap_dir.is_dir() else []:
        if seq < first - 1:
            continue  # the journal no longer reaches back to it
        core = make_core()
        try:
            loaded = snaps.load(path, snapshot_type_of(core))
            core.restore(loaded.state)
        except (SnapshotCorrupt, ValueError, AssertionError) as e:
            reasons.append(f"{path.name}: {e}")
            continue
        if core.state_hash() != loaded.state_hash:
            reasons.append(f"{path.name}: the state hash after restore differs from the recorded one")
            continue
        return core, f"snapshot {path.name}", seq
    why = f" ({'; '.join(reasons)})" if reasons else ""
    raise ValueError(f"the journal starts at seq {first} and no snapshot continues it{why}")


def _replay(data: Path, core: Any, base_seq: int) -> Iterator[AnyPosting]:
    """Every posting the journal makes after ``base_seq``, in order (the genesis
    postings first when the core is empty)."""
    ledger = core.ledger
    yield from ledger.take_postings()
    journal_dir = data / JOURNAL_DIR
    if not journal_dir.is_dir():
        return
    for batch in read_journal(journal_dir, command_decoder(journal_command_types()), base_seq):
        core.apply_batch(batch)
        core.out.clear()
        yield from ledger.take_postings()


def _difference(theirs: AnyPosting, mine: AnyPosting) -> str:
    """One line: how the store's posting differs from the journal's in the same place."""
    if theirs.posting_id != mine.posting_id:
        return (f"the store has posting {theirs.posting_id} (seq {theirs.seq}: {describe(theirs)}) where the journal "
                f"gives {mine.posting_id} (seq {mine.seq}: {describe(mine)})")
    moves = _legs_by_key(theirs)
    wanted = _legs_by_key(mine)
    changed = []
    for key in sorted(set(moves) | set(wanted)):
        got, want = moves.get(key, (0, 0)), wanted.get(key, (0, 0))
        if got != want:
            account, asset = key
            changed.append(f"{account} {asset} {_amount(asset, got[0])} (pending {_amount(asset, got[1])}) where the "
                           f"journal gives {_amount(asset, want[0])} (pending {_amount(asset, want[1])})")
    if changed:
        return f"posting {theirs.posting_id} (seq {theirs.seq}): the store has {'; '.join(changed)}"
    fields = [name for name in ("seq", "ts", "kind", "ref", "actor", "subject", "text", "account", "obligation")
              if getattr(theirs, name) != getattr(mine, name)]
    if type(theirs) is not type(mine):
        fields.append("record type")
    detail = ", ".join(f"{name} {getattr(theirs, name)!r} (journal: {getattr(mine, name)!r})"
                       for name in fields if name != "record type") or "its encoding"
    return f"posting {theirs.posting_id} (seq {theirs.seq}) differs from the journal's in {detail}"


def _legs_by_key(p: AnyPosting) -> dict[tuple[str, str], tuple[int, int]]:
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for account, asset, delta, pending in p.legs:
        d, q = out.get((account, asset), (0, 0))
        out[account, asset] = (d + delta, q + pending)
    return out


def _amount(asset: str, value: int) -> str:
    from settlement.units import format_yuan

    return f"{'+' if value >= 0 else '-'}{format_yuan(abs(value)) if asset == CASH else abs(value)}"


def _compare_prefix(prefix: Ledger, base: LedgerSnapshot, base_seq: int, report: Any) -> None:
    """The store's postings up to the snapshot against the snapshot's ledger."""
    where = f"at the snapshot's seq {base_seq}"
    got = {(a, s): (b, u, w) for a, s, b, _, u, w in prefix.snapshot().entries if b or u or w}
    want = {(a, s): (b, u, w) for a, s, b, _, u, w in base.entries if b or u or w}
    for key in sorted(set(got) | set(want)):
        g, w = got.get(key, (0, 0, 0)), want.get(key, (0, 0, 0))
        if g != w:
            account, asset = key
            report(f"{where}: {account} {asset}: the store's postings give balance {_amount(asset, g[0])} "
                   f"(not yet free {g[1] + g[2]}), the exchange had {_amount(asset, w[0])} (not yet free {w[1] + w[2]})")
    got_accounts = {a.account: a for a in prefix.snapshot().accounts}
    for a in base.accounts:
        if got_accounts.pop(a.account, None) != a:
            report(f"{where}: account {a.account}: the store's postings do not give {a}")
    for name in sorted(got_accounts):
        report(f"{where}: account {name} is in the store's postings, the exchange had no such account")
    got_obligations = {(o.account, o.year): o for o in prefix.snapshot().obligations}
    for o in base.obligations:
        if got_obligations.pop((o.account, o.year), None) != o:
            report(f"{where}: obligation {o.account} {o.year}: the store's postings do not give {o}")
    for account, year in sorted(got_obligations):
        report(f"{where}: obligation {account} {year} is in the store's postings, the exchange had none")
    snap = prefix.snapshot()
    got_years = {(c.account, c.year): c for c in snap.compliance}
    for c in base.compliance:
        if got_years.pop((c.account, c.year), None) != c:
            report(f"{where}: compliance {c.account} {c.year}: the store's postings do not give {c}")
    for account, year in sorted(got_years):
        report(f"{where}: compliance {account} {year} is in the store's postings, the exchange had none")
    if (snap.cycle, snap.sold) != (base.cycle, base.sold):
        report(f"{where}: the store's trades since the last close give value and tonnes {snap.cycle}, "
               f"the exchange had {base.cycle} (or the net sold per account differ)")
    mine, theirs = dict(((c, a), n) for c, a, n in prefix.snapshot().totals), dict(((c, a), n) for c, a, n in base.totals)
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key, 0) != theirs.get(key, 0):
            report(f"{where}: {key[0]} {key[1]}: the store's postings give {mine.get(key, 0)}, the exchange had "
                   f"{theirs.get(key, 0)}")


__all__ = ["FolderAudit", "audit_folder"]
