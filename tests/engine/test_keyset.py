"""The level index: a set of keys as a tree of words, whose work per operation does
not grow with the width of the price band."""

from __future__ import annotations

import bisect
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Side
from engine.book import HalfBook, KeySet, Order

SIZES = (1, 31, 32, 33, 1024, 1025, 32 * 32 * 32 + 7, 2_000_001)


def reference_next(keys: list[int], key: int, size: int) -> int:
    i = bisect.bisect_left(keys, key)
    return keys[i] if i < len(keys) else size


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SIZES), st.randoms(use_true_random=False))
def test_keyset_agrees_with_a_sorted_list(size: int, rnd: random.Random) -> None:
    ks, ref = KeySet(size), []
    # Keys cluster at the ends and around one spot, as a book's levels do.
    spot = rnd.randrange(size)
    def pick() -> int:
        return rnd.choice((rnd.randrange(size), min(size - 1, spot + rnd.randrange(64)), 0, size - 1))
    for _ in range(300):
        key = pick()
        if key in ref:
            ks.remove(key)
            ref.remove(key)
        else:
            ks.add(key)
            bisect.insort(ref, key)
        probe = pick()
        assert ks.next(probe) == reference_next(ref, probe, size)
        assert (probe in ks) == (probe in ref)
        assert len(ks) == len(ref) and bool(ks) == bool(ref)
    for key in list(ref):
        ks.remove(key)
    assert not ks and ks.next(0) == size
    assert all(w == 0 for layer in ks.layers for w in layer)


def order(oid: int, side: int, price: int) -> Order:
    return Order(oid, "A", str(oid), "X", side, price, 1, 0, 1, 1, 0, 0)


def book_flow_visits(width: int, seed: int) -> tuple[int, int, int]:
    """Runs one flow of level changes on the ask side of a band ``width`` ticks wide:
    sparse levels over 40,000 ticks near the best possible price, a mid that swings
    across them, levels taken from the top as trades would, the best five read as a
    depth query would. The flow is the same at every width (keys from the best price).
    Returns (operations, words visited, times the side turned from or to empty)."""
    half = HalfBook(Side.SELL, 1, width)
    half.keys.counting = True
    rnd = random.Random(seed)
    span = 40_000
    live: dict[int, Order] = {}
    ops = firsts = 0
    for step in range(20_000):
        was_empty = not half.keys
        mid = int(span / 2 + span / 3 * ((step % 4000) / 2000 - 1))
        r = rnd.random()
        if r < 0.55 or not live:
            key = max(0, min(span - 1, int(rnd.gauss(mid, 2000))))
            o = order(step, Side.SELL, half.price(key))
            half.add(o, key)
            live[o.order_id] = o
        elif r < 0.9:
            o = live.pop(rnd.choice(list(live)) if len(live) < 64 else next(iter(live)))
            half.kill(o, half.key(o.price))
        elif r < 0.97:  # a trade takes the best level
            key = half.best
            for oid in [oid for oid, o in live.items() if half.key(o.price) == key]:
                o = live.pop(oid)
                half.kill(o, key)
        else:
            half.depth(5)
            half.nth_key(5)
        ops += 1
        firsts += was_empty != (not half.keys)
    half._check()
    return ops, half.keys.visits, firsts


def test_the_level_index_does_the_same_work_at_every_band_width() -> None:
    """Counted in words visited, not seconds: the same flow costs the index the same
    at a band of 60,000 ticks as at 2,000,000 (where the old bitmap of one integer
    cost in proportion to the width), and a handful of words per operation. The one
    difference: the first level of an empty side marks every layer of the tree, and
    the last one unmarks them, one more word for each 32-fold of the width."""
    for seed in (1, 2):
        ops, narrow, turns = book_flow_visits(60_000, seed)
        _, wide, _ = book_flow_visits(2_000_000, seed)
        assert [len(KeySet(w).layers) for w in (60_000, 2_000_000)] == [4, 5]
        assert 0 < turns < 10
        assert wide - narrow == turns, (narrow, wide, turns)
        assert narrow / ops < 4, narrow / ops


def test_a_tree_of_more_layers_is_not_climbed_when_the_next_key_is_near() -> None:
    for size in (2_000, 2_000_000):
        ks = KeySet(size)
        ks.add(10)
        ks.add(45)
        ks.counting = True
        assert ks.next(11) == 45
        assert ks.visits == 3, ks.visits  # 45 is in the next word: up one layer, down again
        ks.visits = 0
        assert ks.next(5) == 10 and ks.visits == 1  # in the same word
