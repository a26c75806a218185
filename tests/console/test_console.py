"""The operator's console end to end: a real ``etx serve``, a real ``etx console`` and a
real headless Chromium (Debian's, through its chromedriver).

- the ladder follows orders entered through the gateway;
- an operator's halt from the page stops trading and shows in the feed;
- a member's orders are cancelled from the page;
- a trader's credentials cannot use the console; the staff view watches but cannot act;
- an action without its CSRF token is refused.
Screenshots of the pages are written to the test's folder (``ETX_SCREENSHOTS=DIR`` keeps
them there too: docs/console.png comes from it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from benchmarks.browser import browser, log_on, text_of, texts, wait_until
from benchmarks.crash_soak import SECRET, free_port
from engine import Rejected, Side
from engine.messages import Cancelled, CancelReason, Reason
from gateway.auth import hash_secret
from gateway.protocol import Report
from settlement import Allocate, Deposit, OpenAccount
from settlement.messages import HolderType
from tests.integration.exchange import ROOT, Exchange, staff_command

SYMBOL = "CEA24"


class Setup:
    """An exchange with funded members M1 and M2, an operator (EXCH/ops) and a staff
    viewer (EXCH/viewer), and a console in front of it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ex = Exchange(tmp)
        digest = hash_secret(SECRET, n=1 << 10)
        with open(self.ex.config, "a") as f:  # the staff view: a read-only user of the exchange's member
            f.write(f'\n[[user]]\nmember = "EXCH"\nuser = "viewer"\nrole = "read_only"\nsecret_hash = "{digest}"\n')
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.console: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        await self.ex.start()
        clerk, auth = self.ex.client("EXCH", "clerk"), self.ex.client("EXCH", "auth")
        await clerk.connect()
        await auth.connect()
        for m in ("M1", "M2"):
            await staff_command(clerk, OpenAccount("", m, int(HolderType.COMPLIANCE), f"{m} Ltd"))
            await staff_command(clerk, Deposit("", m, 10**10))
            await staff_command(auth, Allocate("", "AUTHORITY", m, SYMBOL, 10**5))
        await clerk.close()
        await auth.close()
        log = open(self.tmp / "console.log", "wb")
        self.console = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "console", "--exchange", f"127.0.0.1:{self.ex.port}",
             "--listen", f"127.0.0.1:{self.port}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b"etx console on" not in (self.tmp / "console.log").read_bytes():
            assert self.console.poll() is None, (self.tmp / "console.log").read_text()
            assert time.monotonic() < deadline, "etx console did not start"
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.console is not None:
            self.console.terminate()
            self.console.wait(30)
        assert self.ex.stop() == 0


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    asyncio.run(s.start())
    try:
        yield s
    finally:
        s.stop()


def shot(driver: Any, tmp: Path, name: str) -> None:
    driver.save_screenshot(str(tmp / f"{name}.png"))
    keep = os.environ.get("ETX_SCREENSHOTS")
    if keep:
        shutil.copy(tmp / f"{name}.png", Path(keep) / f"{name}.png")


def ladder_rows(driver: Any, side: str = "") -> list[str]:
    """The ladder's rows (``side`` "ask" or "bid": that side's only), top to bottom."""
    return [" ".join(t.split()) for t in texts(driver, f"#ladder tbody tr{'.' + side if side else ''}")]


# The browser is driven from a thread (asyncio.to_thread): a wait on the page must not
# block the members' event loop, whose sessions answer the exchange's heartbeats (a
# session silent for three seconds is closed).


def test_the_ladder_follows_orders_and_an_operator_halts_from_the_page(setup: Setup) -> None:
    async def trade() -> None:
        m1, m2 = setup.ex.client("M1"), setup.ex.client("M2")
        await m1.connect()
        await m2.connect()
        try:
            d = await asyncio.to_thread(browser)
            try:
                await asyncio.to_thread(log_on, d, setup.url, "EXCH", "ops", SECRET)
                await asyncio.to_thread(wait_until, d, lambda d: "live" in text_of(d, "link"))
                for i in range(5):
                    m1.new_order(SYMBOL, Side.BUY, 10 + i, 9_990 - 5 * i)
                    m2.new_order(SYMBOL, Side.SELL, 20 + i, 10_010 + 5 * i)
                await m1.query_instruments()
                await m2.query_instruments()
                await asyncio.to_thread(wait_until, d, lambda d: len(ladder_rows(d)) == 10)
                rows = ladder_rows(d)
                assert rows[4] == "100.10 20 1" and rows[5] == "1 10 99.90", rows  # best ask above best bid
                m1.new_order(SYMBOL, Side.BUY, 20, 10_010)  # takes the best ask
                await m1.query_instruments()  # sent and taken
                await asyncio.to_thread(wait_until, d, lambda d: ladder_rows(d, "ask")[-1].startswith("100.15"))  # the new best ask
                await asyncio.to_thread(wait_until, d, lambda d: "M1" in text_of(d, "trades") and "M2" in text_of(d, "trades"))
                assert "last 100.10" in text_of(d, "stats")
                await asyncio.to_thread(wait_until, d, lambda d: "M2" in text_of(d, "orders"))  # the open orders follow, with their members
                # A few more trades, a second apart: the chart draws the day's prices.
                for price in (9_990, 10_015, 9_985):
                    await asyncio.sleep(1.1)
                    (m2 if price < 10_000 else m1).new_order(SYMBOL, Side.SELL if price < 10_000 else Side.BUY, 3,
                                                             price)
                    await (m2 if price < 10_000 else m1).query_instruments()
                await asyncio.to_thread(wait_until, d, lambda d: "4 trades" in text_of(d, "stats"))
                assert d.find_elements(By.CSS_SELECTOR, "#chart canvas")
                shot(d, setup.tmp, "console")
                # Halt from the page, with its confirmation and reason.
                d.find_element(By.ID, "halt").click()
                await asyncio.to_thread(wait_until, d, lambda d: d.find_element(By.ID, "confirm").is_displayed())
                d.find_element(By.ID, "confirm-reason").send_keys("an erroneous price in the test")
                d.find_element(By.ID, "confirm-yes").click()
                await asyncio.to_thread(wait_until, d, lambda d: "HALTED" in text_of(d, "status"))
                await asyncio.to_thread(wait_until, d, lambda d: "halt done" in text_of(d, "answers"))
                shot(d, setup.tmp, "console-halted")
            finally:
                d.quit()
            # The halt stopped trading: a crossing order is rejected, the members saw the status.
            m2.new_order(SYMBOL, Side.SELL, 1, 9_000)
            rej = await m2.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, Rejected))
            assert rej.body.reason == Reason.INSTRUMENT_HALTED
        finally:
            await m1.close()
            await m2.close()

    asyncio.run(trade())
    journal = subprocess.run([sys.executable, "-m", "tools.cli", "journal", "inspect", str(setup.ex.data), "--type",
                              "Halt"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "EXCH/ops" in journal.stdout and "an erroneous price in the test" in journal.stdout, journal.stdout


def test_an_operator_cancels_a_members_orders_from_the_page(setup: Setup) -> None:
    async def run() -> None:
        m1 = setup.ex.client("M1")
        await m1.connect()
        try:
            for i in range(3):
                m1.new_order(SYMBOL, Side.BUY, 5, 9_900 - i)
            await m1.query_instruments()
            d = await asyncio.to_thread(browser)
            try:
                await asyncio.to_thread(log_on, d, setup.url, "EXCH", "ops", SECRET)
                await asyncio.to_thread(wait_until, d, lambda d: "live" in text_of(d, "link"))
                # The member's session is listed; its orders are, best bid first.
                await asyncio.to_thread(wait_until, d, lambda d: any("M1" in t.split() for t in texts(d, "#sessions tbody tr")))
                rows = await asyncio.to_thread(wait_until, d, lambda d: (r := texts(d, "#orders tbody tr")) and len(r) == 3 and r)
                assert [r.split()[3] for r in rows] == ["99.00", "98.99", "98.98"], rows
                # One order, from its row: the best bid.
                d.find_elements(By.CSS_SELECTOR, "#orders tbody tr button")[0].click()
                await asyncio.to_thread(wait_until, d, lambda d: d.find_element(By.ID, "confirm").is_displayed())
                assert "98.99" not in text_of(d, "confirm-what") and "99.00" in text_of(d, "confirm-what")
                d.find_element(By.ID, "confirm-reason").send_keys("entered in error")
                d.find_element(By.ID, "confirm-yes").click()
                await asyncio.to_thread(wait_until, d, lambda d: "cancel done" in text_of(d, "answers"))
                one = await m1.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, Cancelled))
                assert one.body.qty == 5 and one.body.order_id == int(rows[0].split()[0])
                await asyncio.to_thread(wait_until, d, lambda d: len(texts(d, "#orders tbody tr")) == 2)
                # Then all of the member's orders.
                d.find_element(By.ID, "member-id").send_keys("M1")
                d.find_element(By.ID, "cancel-all").click()
                await asyncio.to_thread(wait_until, d, lambda d: d.find_element(By.ID, "confirm").is_displayed())
                d.find_element(By.ID, "confirm-reason").send_keys("the member asked by phone")
                d.find_element(By.ID, "confirm-yes").click()
                await asyncio.to_thread(wait_until, d, lambda d: "cancel_all done" in text_of(d, "answers"))
            finally:
                d.quit()
            cancelled = [await m1.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, Cancelled))
                         for _ in range(2)]
            assert all(r.body.reason == CancelReason.MASS_CANCEL for r in cancelled)
            assert await m1.query_orders() == []
        finally:
            await m1.close()

    asyncio.run(run())


def test_open_block_offers_and_block_trades_are_listed(setup: Setup) -> None:
    """The console lists the open block agreement offers with their members and terms,
    and the day's block trades with buyer and seller, as they change."""
    async def run() -> None:
        m1, m2 = setup.ex.client("M1"), setup.ex.client("M2")
        await m1.connect()
        await m2.connect()
        try:
            d = await asyncio.to_thread(browser)
            try:
                await asyncio.to_thread(log_on, d, setup.url, "EXCH", "ops", SECRET)
                await asyncio.to_thread(wait_until, d, lambda d: "live" in text_of(d, "link"))
                # The panel is below the sessions: scrolled to, as an operator would.
                d.execute_script("document.getElementById('blocks-panel').scrollIntoView()")
                m1.block_offer(SYMBOL, Side.SELL, 100_000, 10_300, partial=True)
                offer = await m1.wait_for(lambda m: isinstance(m, Report) and type(m.body).__name__ == "BlockOffered")
                rows = await asyncio.to_thread(wait_until, d, lambda d: texts(d, "#block-offers tbody tr"))
                assert rows[0].split() == [str(offer.body.offer_id), "M1", SYMBOL, "sell", "103.00", "100,000", "parts",
                                           "allowed"], rows
                m2.block_accept(offer.body.offer_id, 40_000)
                await m2.wait_for(lambda m: isinstance(m, Report) and type(m.body).__name__ == "BlockTraded")
                trades = await asyncio.to_thread(wait_until, d, lambda d: texts(d, "#block-trades tbody tr"))
                assert trades[0].split()[1:] == [SYMBOL, "103.00", "40,000", "M2", "M1", str(offer.body.offer_id)], trades
                await asyncio.to_thread(wait_until, d, lambda d: "60,000" in " ".join(texts(d, "#block-offers tbody tr")))
            finally:
                d.quit()
        finally:
            await m1.close()
            await m2.close()

    asyncio.run(run())


def test_only_staff_log_on_and_the_staff_view_cannot_act(setup: Setup) -> None:
    d = browser()
    try:
        log_on(d, setup.url, "M1", "tM1", SECRET)  # a trader
        wait_until(d, lambda d: "exchange staff" in text_of(d, "error"))
        assert d.current_url.endswith("/login")
        log_on(d, setup.url, "EXCH", "ops", "wrong")
        wait_until(d, lambda d: "wrong secret" in text_of(d, "error"))
        log_on(d, setup.url, "EXCH", "viewer", SECRET)  # the staff view
        wait_until(d, lambda d: "view only" in text_of(d, "who"))
        assert not d.find_element(By.ID, "halt").is_displayed()
        # Even past the page, the console refuses the staff view's actions.
        status = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            (async () => {
                const me = await (await fetch('/api/me')).json();
                const r = await fetch('/api/action', {method: 'POST', headers: {'Content-Type': 'application/json',
                    'X-CSRF-Token': me.csrf}, body: JSON.stringify({action: 'halt', instrument: 'CEA24', text: 'x'})});
                done(r.status);
            })();""")
        assert status == 403
    finally:
        d.quit()


def test_an_action_without_its_csrf_token_is_refused(setup: Setup) -> None:
    d = browser()
    try:
        log_on(d, setup.url, "EXCH", "ops", SECRET)
        wait_until(d, lambda d: "live" in text_of(d, "link"))
        statuses = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            (async () => {
                const body = JSON.stringify({action: 'halt', instrument: 'CEA24', text: 'forged'});
                const none = await fetch('/api/action', {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
                const wrong = await fetch('/api/action', {method: 'POST', headers: {'Content-Type': 'application/json',
                    'X-CSRF-Token': 'guessed'}, body});
                done([none.status, wrong.status]);
            })();""")
        assert statuses == [403, 403]
        assert "HALTED" not in text_of(d, "status")
    finally:
        d.quit()
    # And a logon without the log-on page's token.
    import urllib.error
    import urllib.request

    request = urllib.request.Request(setup.url + "/api/login", data=b'{"member":"EXCH","user":"ops","secret":"x"}',
                                     headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403


def test_the_console_says_when_it_listens_and_when_it_cannot() -> None:
    """"etx console on ..." is printed once the console listens (scripts wait for it);
    a port already taken is a clear error, not that line."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "tools.cli", "console", "--exchange", "127.0.0.1:1", "--listen",
                               f"127.0.0.1:{port}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert busy.returncode == 2 and "cannot listen on" in busy.stdout and "console on" not in busy.stdout, busy
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "console", "--exchange", "127.0.0.1:1", "--listen",
                             f"127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "etx console on" in proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # listening already
            pass
    finally:
        proc.terminate()
        proc.wait(30)
