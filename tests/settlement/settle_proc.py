"""A settling process for the crash test: replays a seeded stream through an exchange
and settles it into a store, resuming after the store's last settled sequence number.

    python -m tests.settlement.settle_proc STORE SEED [BATCH_MAX]

Prints ``DONE <last seq> <state hash>`` when everything is durable. With
ETX_TEST_PAUSE_IN_BATCH=N the Nth batch stops inside its transaction (see store.py).
"""

from __future__ import annotations

import sys

from settlement import Exchange, Ledger
from settlement.settler import Settler
from settlement.store import open_store
from tests.settlement.helpers import FEES, INSTRUMENTS
from tests.settlement.workload import stream

CHUNK = 50  # commands per core batch


def run(url: str, seed: int, batch_max: int) -> tuple[int, str, Exchange]:
    store = open_store(url)
    store.migrate()
    resume = store.last_seq()
    store.close()
    exchange = Exchange(INSTRUMENTS, Ledger(FEES))
    settler = Settler(url, batch_max=batch_max, pending_max=max(batch_max, 10_000), resume_after=resume).start()
    cmds = stream(seed)
    for i in range(0, len(cmds), CHUNK):
        exchange.apply_batch(cmds[i:i + CHUNK])
        while not settler.pump(exchange.ledger, exchange.last_seq):
            settler.flush()
    last = settler.close()
    return last, exchange.state_hash(), exchange


def main() -> int:
    url, seed = sys.argv[1], int(sys.argv[2])
    batch_max = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    last, digest, _ = run(url, seed, batch_max)
    print("DONE", last, digest, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
