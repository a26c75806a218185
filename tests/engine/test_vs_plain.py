"""The flows of the comparison with the plain book (benchmarks.vs_plain) give the same
fills in etx as in the plain book, at every band width, and leave the same best prices."""

from __future__ import annotations

import pytest

from benchmarks.vs_plain import (
    CANCEL,
    MARKET,
    REGIMES,
    SYMBOL,
    WIDTHS,
    generate,
    plain_apply,
    plainbook,
    run_etx,
    same_fills,
)
from engine.matching import Engine


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("regime", REGIMES)
def test_etx_and_the_plain_book_fill_alike(regime: str, width: int) -> None:
    flow = generate(regime, 6_000, width, seed=3)
    assert same_fills(flow) > 100


def test_every_way_of_feeding_leaves_the_same_book() -> None:
    """Each way of feeding the engine in the benchmark applies every order: the same
    orders accepted and the same book at the end, the plain book's best prices."""
    flow = generate("carbon", 2_000, 2_000, seed=3)
    plain = plainbook().Book()
    plain_apply(plain, flow.warmup + flow.ops)
    engines: list[Engine] = []
    for way in ("call", "direct", "call-noacks", "batch", "engine"):
        run_etx(flow, way, engines)
    first = engines[0]
    assert first.next_order_id == 1 + sum(op[0] != CANCEL for op in flow.warmup + flow.ops)
    assert (first.best_bid(SYMBOL), first.best_ask(SYMBOL)) == (plain.best_bid(), plain.best_ask())
    for engine in engines[1:]:
        assert engine.depth(SYMBOL, 10_000) == first.depth(SYMBOL, 10_000)
        assert engine.next_order_id == first.next_order_id
        engine._check()


def test_the_carbon_flow_is_a_carbon_book() -> None:
    """About 2,000-2,400 resting orders over some 130 levels a side; 2 % market
    orders and about a third cancels."""
    flow = generate("carbon", 20_000, 2_000, seed=3)
    kinds = [op[0] for op in flow.ops]
    assert 0.01 < kinds.count(MARKET) / len(kinds) < 0.03
    assert 0.25 < kinds.count(CANCEL) / len(kinds) < 0.4
    book = plainbook().Book()
    plain_apply(book, flow.warmup + flow.ops)
    assert 1_800 < len(book.orders) < 2_600
    assert 80 < len(book.bids) < 250 and 80 < len(book.asks) < 250


def test_a_sparse_book_empties_a_level_with_almost_every_cancel() -> None:
    flow = generate("wide", 10_000, 60_000, seed=3)
    book = plainbook().Book()
    plain_apply(book, flow.warmup)
    emptied = cancels = 0
    for op in flow.ops:
        levels = len(book.bids) + len(book.asks)
        plain_apply(book, [op])
        if op[0] == CANCEL:
            cancels += 1
            emptied += len(book.bids) + len(book.asks) < levels
    assert emptied / cancels > 0.9
