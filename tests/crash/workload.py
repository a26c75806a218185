"""A seeded exchange workload for the journal, snapshot, recovery and crash tests.

``exchange_workload(n, seed)`` returns a ``make_core`` that builds a fresh
``settlement.Exchange`` (pre-trade holds, fees) and a stamped command stream for it:
registry commands that open the members' accounts, deposit cash and allocate
allowances, then ``n`` order commands from ``benchmarks.generator`` (mixed flow), a few
more registry commands in between and an end of day in the middle, so the journal
holds every kind of command the exchange journals. Same (n, seed): same commands.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from benchmarks.generator import ASSET_DEPOSIT, CASH_DEPOSIT, generate
from engine.messages import EndOfDay
from settlement import Allocate, Deposit, Exchange, Fees, HolderType, Ledger, OpenAccount

FEES = Fees(trading_ppm=300, settlement_ppm=100, reserve_share_ppm=200_000)


def exchange_workload(n: int, seed: int) -> tuple[Callable[[], Exchange], list[Any]]:
    work = generate("mixed", n, seed, holds=True, members=8)
    header = work.header
    flow = work.all()
    ts0 = flow[0].ts
    head: list[Any] = []
    members = sorted({a for a, _, _ in header.holds})
    for m in members:
        head.append(OpenAccount("clerk", m, int(HolderType.COMPLIANCE), f"{m} Ltd"))
    for account, asset, amount in header.holds:
        if asset == "CNY":
            head.append(Deposit("clerk", account, amount))
        else:
            head.append(Allocate("mee", FEES.authority_account, account, asset, amount))
    rng = random.Random(seed)
    body: list[Any] = []
    eod_at = len(flow) // 2
    for i, cmd in enumerate(flow):
        if i == eod_at:
            body.append(EndOfDay())
        elif rng.random() < 0.002:
            body.append(Deposit("clerk", rng.choice(members), rng.randint(1, 10**6)))
        body.append(cmd)
    cmds = head + body
    ts = ts0
    for seq, cmd in enumerate(cmds, 1):
        ts = max(ts, cmd.ts)
        cmd.seq, cmd.ts = seq, ts
    instruments = header.instruments

    def make_core() -> Exchange:
        return Exchange(instruments, Ledger(FEES))

    assert CASH_DEPOSIT and ASSET_DEPOSIT  # the generator's deposits cover every order
    return make_core, cmds
