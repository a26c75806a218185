"""``etx demo`` end to end: a short day on a fresh folder trades, settles to the SQLite
registry and passes the registry audit; the output has every section a new user reads."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from tools.demo import run_demo


def test_demo_trades_settles_and_audits_clean(tmp_path: Path) -> None:
    out = io.StringIO()
    result = asyncio.run(run_demo(1.5, 3, str(tmp_path / "day"), market_data=False, out=out, scrypt_n=1 << 10, seed=7))
    text = out.getvalue()
    assert result.orders > 50 and result.trades > 0 and result.volume > 0, text
    assert result.audit == [], text
    for section in ("registry: 3 accounts opened", "Book CEA24", "Book CEA23", "Last trades", "The day so far",
                    "Members' balances", "Registry audit: OK", "What next", "Block trade #", "sold 100,000 t of CEA24", "Auction 1: M03 sold 100,000 of 100,000 t"):
        assert section in text, section
    assert (tmp_path / "day" / "etx-registry.sqlite").exists()
    assert any((tmp_path / "day" / "journal").iterdir())
