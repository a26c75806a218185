"""Market data from a running exchange, as a new user meets it: a real ``Service`` (or
``etx serve``) configured by its ``[market_data]`` section, gateway clients trading over
TCP, a real Mosquitto (tests/mosquitto.py), and subscribers that know only what the
broker delivers.

What each test shows:
- the best 10 levels a subscriber rebuilds from the feed are the engine's after a burst
  of orders and cancels (``depth = 10``), and the trades feed adds up to the volume;
- a subscriber that connects late gets the retained state at once: book, stats,
  status, reference data and ``{root}/status``;
- a cleanly stopped exchange leaves every status "closed", and its restart publishes
  the recovered seq and ts rather than 0; a SIGKILLed ``etx serve`` leaves
  ``{root}/status`` "lost" and health "offline" (the broker's will), and the next start
  takes over at once;
- the broker stopped and restarted mid-trading: every order is accepted throughout and
  the feed comes back whole (the retained snapshots republished);
- two exchanges with different ids on one broker stay under their own roots, and a
  second exchange with the same id publishes nothing and says so in one line while it
  trades on;
- a broker with users and passwords (``mosquitto_passwd``, ``allow_anonymous false``)
  and one with TLS and client certificates are published to; a wrong password or CA
  is one log line, and the exchange trades on.

The order flow is random from a fixed, printed seed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine import Side
from engine.messages import Accepted, Cancelled, Rejected
from gateway.auth import hash_secret
from gateway.client import Client
from gateway.config import loads
from gateway.protocol import CodMode, Fill, Report
from gateway.serve import Service
from settlement import Allocate, Deposit, HolderType, OpenAccount, RegistryDone, RegistryRejected
from tests.mosquitto import Mosquitto, Subscriber, mosquitto_broker
from tests.tls import make_certificate

broker = mosquitto_broker

ROOT = Path(__file__).resolve().parents[2]
SYMBOL = "CEA24"
SECRET = "md-secret"
HASH = hash_secret(SECRET, n=1 << 10)
SEED = 20241128
WAIT_S = 10.0
TRADERS = ("M1", "M2")


def config_text(broker_port: int, *, exchange_id: str = "etx", market_data: str = "") -> str:
    """Two trading members, a clerk and the authority; market data to the broker every
    20 ms, health every 100 ms."""
    users = [(m, f"t{m}", "trader") for m in TRADERS] + [("EXCH", "clerk", "clerk"), ("EXCH", "auth", "authority")]
    lines = [
        "[exchange]", 'listen = "127.0.0.1:0"', 'schedule = "always"', f'id = "{exchange_id}"', "",
        "[market_data]", f"port = {broker_port}", "interval_ms = 20", "health_interval_ms = 100", market_data, "",
        "[[instrument]]", f'symbol = "{SYMBOL}"', "ref_price = 100.00", "",
    ]
    for m in TRADERS:
        lines += ["[[member]]", f'id = "{m}"', ""]
    for member, user, role in users:
        lines += ["[[user]]", f'member = "{member}"', f'user = "{user}"', f'role = "{role}"', f'secret_hash = "{HASH}"',
                  ""]
    return "\n".join(lines)


def md_root(exchange_id: str = "etx") -> str:
    return f"etx/v1/{exchange_id}"


def levels(side: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """The engine's (price, qty, orders) levels as the feed writes them."""
    return [{"price": p, "price_yuan": f"{p // 100}.{p % 100:02d}", "qty": q, "orders": n} for p, q, n in side]


async def until(cond: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            while not cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT_S} s: {what}") from None


class Served:
    """A ``Service`` on its own data folder, listening on a free port, with clients.
    ``async with Served(tmp_path, text) as ex: trader = await ex.trader("M1")``."""

    def __init__(self, folder: Path, text: str, **service: Any) -> None:
        self.cfg = loads(text)
        self.folder = folder
        self.service_kw = service
        self.clients: list[Client] = []
        self.running = False

    async def __aenter__(self) -> Served:
        self.service = Service(self.cfg, self.folder, **self.service_kw)
        _, self.port = await self.service.start("127.0.0.1", 0)
        self.running = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop it (once; a test may stop it before its block ends)."""
        if not self.running:
            return
        self.running = False
        for c in self.clients:
            await c.close()
        self.clients.clear()
        await self.service.stop()

    @property
    def engine(self) -> Any:
        return self.service.exchange.engine

    @property
    def md(self) -> Any:
        return self.service.md

    async def client(self, member: str, user: str) -> Client:
        c = Client("127.0.0.1", self.port, member, user, SECRET, cod=CodMode.OFF, coid_prefix=f"{user}-")
        await c.connect()
        self.clients.append(c)
        return c

    async def fund(self) -> None:
        """Open, fund and allocate every trader's account through the staff."""
        clerk, auth = await self.client("EXCH", "clerk"), await self.client("EXCH", "auth")
        for m in TRADERS:
            clerk.send(OpenAccount("", m, int(HolderType.COMPLIANCE), f"{m} Ltd"))
            clerk.send(Deposit("", m, 10**12))
        for _ in range(2 * len(TRADERS)):
            await answered(clerk)
        for m in TRADERS:
            auth.send(Allocate("", "AUTHORITY", m, SYMBOL, 10**7))
            await answered(auth)


ANSWERS = (Accepted, Rejected, Cancelled, RegistryDone, RegistryRejected)


async def answer(client: Client) -> Any:
    """The next answer to a command the client sent (other reports, such as the
    instrument's phase, are passed over)."""
    rep = await client.wait_for(lambda m: isinstance(m, Report) and isinstance(m.body, ANSWERS), WAIT_S)
    return rep.body


async def answered(staff: Client) -> None:
    body = await answer(staff)
    assert type(body) is RegistryDone, body


async def reports(client: Client) -> list[Any]:
    """Every report body the client has been sent so far: a query's answer comes after
    every report queued before it."""
    await client.query_instruments(timeout=WAIT_S)
    out = []
    while client.pending():
        msg = await client.next(WAIT_S)
        if type(msg) is Report:
            out.append(msg.body)
    return out


async def burst(ex: Served, rng: random.Random, orders: int) -> int:
    """Random limit orders from both traders around 100.00 (some cross and trade), then
    cancels of a random half of those accepted; the highest seq of a book change the
    traders were told of."""
    traders = [await ex.client(m, f"t{m}") for m in TRADERS]
    accepted: list[tuple[Client, int]] = []
    last = 0
    for _ in range(orders):
        c = rng.choice(traders)
        side = rng.choice((Side.BUY, Side.SELL))
        # Buys mostly below 100.00 and sells above, with an overlap so that some trade.
        price = rng.randint(9_940, 10_020) if side == Side.BUY else rng.randint(9_980, 10_060)
        c.new_order(SYMBOL, side, rng.randint(1, 40), price)
    for c in traders:
        for body in await reports(c):
            if type(body) is Accepted:
                accepted.append((c, body.order_id))
            if type(body) in (Accepted, Cancelled, Fill):
                last = max(last, body.seq)
    for c, order_id in rng.sample(accepted, len(accepted) // 2):
        c.cancel(order_id)
    for c in traders:
        for body in await reports(c):
            assert type(body) in (Cancelled, Rejected, Fill), body  # Rejected: it had traded away meanwhile
            if type(body) is Cancelled:
                last = max(last, body.seq)
    return last


def test_depth_10_rebuilt_from_the_feed_equals_the_engine(broker: Mosquitto, tmp_path: Path) -> None:
    print(f"seed {SEED}")

    async def main() -> None:
        async with Subscriber(broker.port) as feed, \
                Served(tmp_path, config_text(broker.port, market_data="depth = 10")) as ex:
            await ex.fund()
            last = await burst(ex, random.Random(SEED), 600)
            book = await feed.wait(f"{md_root()}/md/{SYMBOL}/book", lambda m: m["seq"] >= last)
            bids, asks = ex.engine.depth(SYMBOL, 10)
            assert len(bids) == len(asks) == 10, (bids, asks)
            newest = max(feed.on(f"{md_root()}/md/{SYMBOL}/book"), key=lambda m: m["seq"])
            assert newest == book
            assert (book["bids"], book["asks"]) == (levels(bids), levels(asks))
            stats = ex.engine.markets[SYMBOL].stats()
            assert stats["trades"] > 0, "the burst must trade"
            got = await feed.wait(f"{md_root()}/md/{SYMBOL}/stats", lambda m: m["trades"] == stats["trades"])
            assert got["volume"] == stats["volume"]
            await until(lambda: sum(t["qty"] for m in feed.on(f"{md_root()}/md/{SYMBOL}/trades") for t in m)
                        >= stats["volume"], "the trades feed adds up to the volume")
            trades = [t for m in feed.on(f"{md_root()}/md/{SYMBOL}/trades") for t in m]
            assert [t["trade_id"] for t in trades] == list(range(1, stats["trades"] + 1))
            print(f"{stats['trades']} trades, {len(feed.on(f'{md_root()}/md/{SYMBOL}/book'))} book messages")

    asyncio.run(main())


def test_a_late_subscriber_gets_the_retained_state(broker: Mosquitto, tmp_path: Path) -> None:
    async def main() -> None:
        async with Served(tmp_path, config_text(broker.port)) as ex:
            await ex.fund()
            last = await burst(ex, random.Random(SEED + 1), 100)
            async with Subscriber(broker.port) as live:  # wait until the feed has it all
                await live.wait(f"{md_root()}/md/{SYMBOL}/book", lambda m: m["seq"] >= last)
                await live.wait(f"{md_root()}/ops/health", lambda m: m["last_seq"] >= last)
            async with Subscriber(broker.port) as late:
                status = await late.wait(f"{md_root()}/status")
                assert status["state"] == "online" and status["instance"] == ex.md.instance
                book = await late.wait(f"{md_root()}/md/{SYMBOL}/book")
                bids, asks = ex.engine.depth(SYMBOL, 5)
                assert (book["bids"], book["asks"], book["phase"]) == (levels(bids), levels(asks), "continuous")
                stats = await late.wait(f"{md_root()}/md/{SYMBOL}/stats")
                assert stats["volume"] == ex.engine.markets[SYMBOL].stats()["volume"]
                assert (await late.wait(f"{md_root()}/md/{SYMBOL}/status"))["phase"] == "continuous"
                ref = await late.wait(f"{md_root()}/md/{SYMBOL}/ref")
                assert (ref["ref_price"], ref["tick"], ref["band_low"], ref["band_high"]) == (10000, 1, 9000, 11000)
                assert ref["windows"] == [{"open": "00:00", "close": "24:00"}] and ref["utc_offset"] == "+00:00"
                assert (await late.wait(f"{md_root()}/ops/health"))["status"] == "online"
                first = {}
                for topic, _, retain in late.messages:
                    first.setdefault(topic, retain)
                assert all(first.values()), f"each topic first came retained: {first}"  # health also comes live
                assert not late.on(f"{md_root()}/md/{SYMBOL}/trades")

    asyncio.run(main())


def test_a_clean_stop_reads_closed_and_a_restart_carries_the_real_seq(broker: Mosquitto, tmp_path: Path) -> None:
    async def main() -> None:
        data = tmp_path / "data"
        text = config_text(broker.port)
        async with Served(data, text) as ex:
            await ex.fund()
            last = await burst(ex, random.Random(SEED + 2), 50)
            first = ex.md.instance
        stopped = ex.engine.last_seq
        assert stopped >= last
        async with Subscriber(broker.port) as after:
            status = await after.wait(f"{md_root()}/status")
            assert (status["state"], status["instance"], status["seq"]) == ("closed", first, stopped)
            assert (await after.wait(f"{md_root()}/md/{SYMBOL}/status"))["phase"] == "closed"
            book = await after.wait(f"{md_root()}/md/{SYMBOL}/book")
            assert book["phase"] == "closed" and book["bids"] and book["asks"]  # as they were, flagged closed
            assert (await after.wait(f"{md_root()}/ops/health"))["status"] == "offline"
        # The restart recovers seq `stopped` and publishes it (it used to say seq 0, ts 0).
        async with Subscriber(broker.port) as live:
            await live.wait(f"{md_root()}/md/{SYMBOL}/status")  # the retained ones of the last run come first
            await live.wait(f"{md_root()}/md/{SYMBOL}/stats")
            mark = len(live.messages)
            async with Served(data, text) as again:
                assert again.engine.last_seq == stopped and again.engine.last_ts > 0
                online = await live.wait(f"{md_root()}/status", lambda m: m["state"] == "online", since=mark)
                assert online["instance"] == again.md.instance != first
                for topic in ("stats", "status", "book", "ref"):
                    msg = await live.wait(f"{md_root()}/md/{SYMBOL}/{topic}", since=mark)
                    assert 0 < msg["seq"] <= stopped and msg["ts"] > 0, (topic, msg)
                status = await live.wait(f"{md_root()}/md/{SYMBOL}/status", since=mark)
                assert status["phase"] == "continuous"

    asyncio.run(main())


def test_a_sigkilled_serve_leaves_its_status_lost(broker: Mosquitto, tmp_path: Path) -> None:
    config = tmp_path / "etx.toml"
    config.write_text(config_text(broker.port))

    def serve() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "serve", "--config", str(config), "--data",
                                 str(tmp_path / "data"), "--log-level", "WARNING"], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # the instance comes before "etx serving on"
            lines.append(line)
            if line.startswith("etx serving on"):
                break
        found = re.search(r"as instance ([0-9a-f]{16})", "".join(lines))
        assert found, "".join(lines)
        return proc, found[1]

    async def main() -> None:
        async with Subscriber(broker.port) as live:
            proc, instance = serve()
            try:
                online = await live.wait(f"{md_root()}/status", lambda m: m["state"] == "online")
                assert online["instance"] == instance
                await live.wait(f"{md_root()}/ops/health", lambda m: m["status"] == "online")
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                lost = await live.wait(f"{md_root()}/status", lambda m: m["state"] == "lost")
                assert lost["instance"] == instance
                assert (await live.wait(f"{md_root()}/ops/health", lambda m: m["status"] == "offline"))["last_seq"] == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
                assert proc.stdout is not None
                proc.stdout.close()
        async with Subscriber(broker.port) as late:
            assert (await late.wait(f"{md_root()}/status"))["state"] == "lost"
            # The next start on the same broker takes over at once: "lost" keeps nobody out.
            proc, again = serve()
            try:
                online = await late.wait(f"{md_root()}/status", lambda m: m["state"] == "online")
                assert online["instance"] == again != instance
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.stdout is not None
                out = proc.stdout.read()
                assert proc.wait(30) == 0, out
                proc.stdout.close()
            closed = await late.wait(f"{md_root()}/status", lambda m: m["state"] == "closed")
            assert closed["instance"] == again

    asyncio.run(main())


def test_the_feed_recovers_from_a_broker_restart_while_orders_are_accepted(broker: Mosquitto, tmp_path: Path) -> None:
    print(f"seed {SEED + 3}")

    async def main() -> None:
        rng = random.Random(SEED + 3)
        async with Served(tmp_path, config_text(broker.port)) as ex:
            await ex.fund()
            trader = await ex.client("M1", "tM1")
            period = ["up"]  # the broker's state when each answer came
            answers: list[tuple[str, Any]] = []
            going = True

            async def trade() -> None:
                while going:
                    side = rng.choice((Side.BUY, Side.SELL))
                    trader.new_order(SYMBOL, side, rng.randint(1, 5),
                                     rng.randint(9_900, 9_990) if side == Side.BUY else rng.randint(10_010, 10_100))
                    answers.append((period[0], await answer(trader)))

            def count(state: str) -> int:
                return sum(p == state for p, _ in answers)

            task = asyncio.create_task(trade())
            await until(lambda: count("up") >= 20 and ex.md.connected, "trading with market data")
            period[0] = "down"
            await asyncio.to_thread(broker.stop)
            await until(lambda: not ex.md.connected, "the publisher notices the broker is gone")
            await until(lambda: count("down") >= 50, "orders accepted while the broker is away")
            await asyncio.to_thread(broker.start)
            period[0] = "back"
            await until(lambda: ex.md.connected, "the publisher reconnects")
            await until(lambda: count("back") >= 20, "orders accepted after the broker is back")
            going = False
            await asyncio.wait_for(task, WAIT_S)
            assert all(type(body) is Accepted for _, body in answers), [b for _, b in answers if type(b) is not Accepted]
            last = max(body.seq for _, body in answers)
            print(f"accepted: {count('up')} before, {count('down')} while the broker was away, {count('back')} after")
            # The restarted broker kept nothing; the publisher sent it all again.
            async with Subscriber(broker.port) as fresh:
                status = await fresh.wait(f"{md_root()}/status")
                assert (status["state"], status["instance"]) == ("online", ex.md.instance)
                book = await fresh.wait(f"{md_root()}/md/{SYMBOL}/book", lambda m: m["seq"] >= last)
                bids, asks = ex.engine.depth(SYMBOL, 5)
                assert (book["bids"], book["asks"]) == (levels(bids), levels(asks))
                for topic in ("stats", "status", "ref"):
                    await fresh.wait(f"{md_root()}/md/{SYMBOL}/{topic}")
                assert ex.md.reconnects == 1

    asyncio.run(main())


def test_two_exchanges_with_their_own_ids_share_a_broker(broker: Mosquitto, tmp_path: Path) -> None:
    async def main() -> None:
        async with Subscriber(broker.port) as feed, \
                Served(tmp_path / "sh", config_text(broker.port, exchange_id="sh")) as sh, \
                Served(tmp_path / "hb", config_text(broker.port, exchange_id="hb")) as hb:
            for ex, seed in ((sh, SEED + 4), (hb, SEED + 5)):
                await ex.fund()
                ex.last = await burst(ex, random.Random(seed), 80)  # type: ignore[attr-defined]
            for ex, name in ((sh, "sh"), (hb, "hb")):
                book = await feed.wait(f"{md_root(name)}/md/{SYMBOL}/book",
                                       lambda m, ex=ex: m["seq"] >= ex.last)  # type: ignore[attr-defined]
                bids, asks = ex.engine.depth(SYMBOL, 5)
                assert (book["bids"], book["asks"]) == (levels(bids), levels(asks)), name
                online = await feed.wait(f"{md_root(name)}/status")
                assert (online["state"], online["instance"]) == ("online", ex.md.instance)
            assert sh.engine.depth(SYMBOL, 5) != hb.engine.depth(SYMBOL, 5)  # different books: a mix would show
            topics = {t for t, _, _ in feed.messages}
            assert all(t.startswith(("etx/v1/sh/", "etx/v1/hb/")) for t in topics), topics
            await sh.__aexit__(None, None, None)  # one stops; the other is untouched
            await feed.wait(f"{md_root('sh')}/status", lambda m: m["state"] == "closed")
            async with Subscriber(broker.port, f"{md_root('hb')}/#") as late:
                assert (await late.wait(f"{md_root('hb')}/status"))["state"] == "online"
                assert (await late.wait(f"{md_root('hb')}/md/{SYMBOL}/status"))["phase"] == "continuous"

    asyncio.run(main())


def test_a_second_exchange_with_the_same_id_publishes_nothing(broker: Mosquitto, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="etx.marketdata")

    async def main() -> None:
        async with Subscriber(broker.port) as feed, \
                Served(tmp_path / "first", config_text(broker.port)) as first:
            await feed.wait(f"{md_root()}/status", lambda m: m["state"] == "online")
            async with Served(tmp_path / "second", config_text(broker.port)) as second:
                await asyncio.wait_for(second.service.md_task, WAIT_S)  # it gave up, and said so
                assert second.md.refused_by == first.md.instance
                await second.fund()  # the second exchange trades on, without market data
                trader = await second.client("M1", "tM1")
                trader.new_order(SYMBOL, Side.BUY, 7, 9_123)
                assert type(await answer(trader)) is Accepted
                await first.fund()
                buyer = await first.client("M2", "tM2")
                buyer.new_order(SYMBOL, Side.BUY, 3, 9_500)
                seq = (await answer(buyer)).seq
                book = await feed.wait(f"{md_root()}/md/{SYMBOL}/book", lambda m: m["seq"] >= seq)
                assert [lv["price"] for lv in book["bids"]] == [9_500]
            assert {m["instance"] for m in feed.on(f"{md_root()}/status")} == {first.md.instance}
            assert not any(b"9123" in p for _, p, _ in feed.messages), "the second exchange's book went out"
            assert (await feed.wait(f"{md_root()}/ops/health", lambda m: m["last_seq"] >= seq))["status"] == "online"
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert f"(instance {first.md.instance}) is online under {md_root()};" in errors[0], errors
        assert "trading goes on without market data" in errors[0], errors

    asyncio.run(main())


def password_file(path: Path, password: str) -> Path:
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def test_username_and_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="etx.marketdata")
    with Mosquitto(tmp_path, users={"etx": "pa55-xyzzy", "reader": "r3ad-only"}) as secured:
        async def main() -> None:
            right = password_file(tmp_path / "right.pass", "pa55-xyzzy")
            text = config_text(secured.port, market_data=f'username = "etx"\npassword_file = "{right}"')
            async with Subscriber(secured.port, username="reader", password="r3ad-only") as feed, \
                    Served(tmp_path / "ok", text) as ex:
                await ex.fund()
                last = await burst(ex, random.Random(SEED + 6), 40)
                await feed.wait(f"{md_root()}/md/{SYMBOL}/book", lambda m: m["seq"] >= last)
                assert (await feed.wait(f"{md_root()}/status"))["instance"] == ex.md.instance
            anonymous = Subscriber(secured.port)
            with pytest.raises(Exception, match="Not authorized|Bad user"):
                async with anonymous:
                    pass

            wrong = password_file(tmp_path / "wrong.pass", "not-the-password")
            text = config_text(secured.port, market_data=f'username = "etx"\npassword_file = "{wrong}"')
            caplog.clear()
            async with Served(tmp_path / "wrong", text) as ex:
                await until(lambda: ex.md.connect_failures >= 3, "three refused attempts")
                assert not ex.service.md_task.done()  # it keeps trying, quietly
                await ex.fund()  # the exchange trades on
                trader = await ex.client("M1", "tM1")
                trader.new_order(SYMBOL, Side.SELL, 1, 10_000)
                assert type(await answer(trader)) is Accepted
            lines = [r.getMessage() for r in caplog.records if r.name == "etx.marketdata"]
            assert len(lines) == 1, lines
            assert "refused user 'etx'" in lines[0] and "market_data.password_file" in lines[0], lines
            assert not any("not-the-password" in r.getMessage() or "pa55" in r.getMessage() for r in caplog.records)

        asyncio.run(main())


def test_tls_with_client_certificates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="etx.marketdata")
    server_cert, server_key = make_certificate(tmp_path, "localhost")  # the name the exchange connects to
    client_cert, client_key = make_certificate(tmp_path, "etx-client")
    stranger, _ = make_certificate(tmp_path, "stranger")
    with Mosquitto(tmp_path, tls=(server_cert, server_key, client_cert), require_certificate=True) as secured:
        async def main() -> None:
            md = (f'host = "localhost"\ntls = true\ntls_ca = "{server_cert}"\n'
                  f'tls_cert = "{client_cert}"\ntls_key = "{client_key}"')
            reader = ssl.create_default_context(cafile=str(server_cert))
            reader.load_cert_chain(client_cert, client_key)
            async with Subscriber(secured.port, host="localhost", tls_context=reader) as feed, \
                    Served(tmp_path / "ok", config_text(secured.port, market_data=md)) as ex:
                await ex.fund()
                last = await burst(ex, random.Random(SEED + 7), 40)
                book = await feed.wait(f"{md_root()}/md/{SYMBOL}/book", lambda m: m["seq"] >= last)
                assert book["bids"] == levels(ex.engine.depth(SYMBOL, 5)[0])
                assert ex.md.url.startswith("mqtts://localhost:")

            caplog.clear()
            md = f'host = "localhost"\ntls = true\ntls_ca = "{stranger}"\ntls_cert = "{client_cert}"\ntls_key = "{client_key}"'
            async with Served(tmp_path / "wrong", config_text(secured.port, market_data=md)) as ex:
                await until(lambda: ex.md.connect_failures >= 2, "two failed handshakes")
                trader = await ex.client("M1", "tM1")
                await ex.fund()
                trader.new_order(SYMBOL, Side.SELL, 1, 10_000)
                assert type(await answer(trader)) is Accepted
            lines = [r.getMessage() for r in caplog.records if r.name == "etx.marketdata"]
            assert len(lines) == 1 and "TLS with MQTT broker localhost:" in lines[0], lines
            assert "CERTIFICATE_VERIFY_FAILED" in lines[0] and "tls_ca" in lines[0], lines

        asyncio.run(main())
