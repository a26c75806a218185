"""A deterministic, seeded stream of registry and engine commands for settlement tests
and the crash test: accounts, cash, allocations, then orders that trade a lot, with
registry operations and an end of day in between."""

from __future__ import annotations

import random
from typing import Any

from engine import EndOfDay, ManualClock, NewOrder, Sequencer, Side
from settlement import Allocate, Deposit, OpenAccount, Retire, SetObligation, Surrender, Transfer, Withdraw

START_NS = 1_700_000_000_000_000_000


def stream(seed: int, accounts: int = 12, orders: int = 2000) -> list[Any]:
    rng = random.Random(seed)
    names = [f"M{i:03d}" for i in range(accounts)]
    cmds: list[Any] = []
    for name in names:
        cmds.append(OpenAccount("clerk", name, 1, f"{name} Power"))
        cmds.append(Deposit("clerk", name, rng.randrange(50_000_000, 500_000_000)))
        cmds.append(Allocate("mee", "AUTHORITY", name, "CEA24", rng.randrange(1_000, 50_000)))
        cmds.append(Allocate("mee", "AUTHORITY", name, "CEA23", rng.randrange(100, 5_000)))
        cmds.append(SetObligation("mee", "AUTHORITY", name, 2024, rng.randrange(100, 5_000)))
    for i in range(orders):
        member = rng.choice(names)
        r = rng.random()
        if r < 0.02:
            cmds.append(Transfer("clerk", member, rng.choice(names), "CEA23", rng.randrange(1, 50)))
        elif r < 0.03:
            cmds.append(Surrender("clerk", member, "CEA23", rng.randrange(1, 30), 2024))
        elif r < 0.035:
            cmds.append(Retire("clerk", member, "CEA24", rng.randrange(1, 10)))
        elif r < 0.04:
            cmds.append(Withdraw("clerk", member, rng.randrange(1, 100_000)))
        elif i == orders // 2:
            cmds.append(EndOfDay())
        else:
            symbol = "CEA24" if rng.random() < 0.8 else "CEA23"
            ref = 10_000 if symbol == "CEA24" else 9_000
            side = int(Side.BUY) if rng.random() < 0.5 else int(Side.SELL)
            price = ref + rng.randrange(-50, 51) * 10
            cmds.append(NewOrder(member, f"o{i}", symbol, side, rng.randrange(1, 300), price))
    clock = ManualClock(START_NS)
    seq = Sequencer(clock)
    for cmd in cmds:
        clock.advance(rng.randrange(1, 1_000_000))
        seq.stamp(cmd)
    return cmds
