"""``etx console``: the market operator's console, a web application beside the exchange.

How it works:
- ``etx console`` is a process of its own (aiohttp, on 127.0.0.1:7480 by default; HTTPS
  with ``--tls-cert``/``--tls-key``). It is one more client of the exchange's gateway:
  an operator logs on in the browser with the operator's own credentials (the same
  users as the gateway), and the console opens a gateway session as that user. The
  gateway checks the secret, the role and every action; the journal records the
  operator's name with every action, and the reason typed in the page.
- Who may log on: operators (watch and act) and read-only users of the exchange's own
  member (the staff view: watch only). A trader's credentials are refused.
- The browser keeps a session cookie (random, HttpOnly, SameSite=Strict, Secure over
  HTTPS, ``IDLE_S`` idle at most); every action, and the logon itself, must carry the
  session's CSRF token in an ``X-CSRF-Token`` header (the logon: the token of the
  log-on page's cookie), or it is refused (403).
- Live data: the gateway session's operator feed (``gateway.watch``: instrument views
  with 10 levels, trades with both members, the day's chart, alerts, health, sessions)
  is kept per console session and fanned out as JSON over a WebSocket to each of its
  browser tabs. Each tab has a bounded queue (``QUEUE_MAX`` messages); a tab that does
  not keep up is closed (the page reconnects and gets the current state): a slow
  browser is dropped, never waited for, and the exchange only ever sees one conflated
  feed per console session.
- Actions (POST /api/action, operators only): halt and resume an instrument, end the
  day, cancel one order, cancel all of a member's orders (per instrument or all),
  suspend and reinstate a member's trading, unlock a user, disconnect a session. The
  page asks for confirmation and a reason; the answer is the exchange's (``Client.command``:
  the rejection that answers it, or done).

Static files (HTML, JS, CSS, and uPlot for the chart, vendored with its licence) are
served as they are: no build step.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from engine.messages import (
    Cancel,
    CancelReason,
    EndOfDay,
    Halt,
    MassCancel,
    Phase,
    Rejected,
    Resume,
    Side,
)
from gateway.client import Client, LogonError, QueryError, tls_context
from gateway.datadir import exchange_address
from gateway.protocol import (
    AlertView,
    BlocksView,
    ChartView,
    CodMode,
    GatewayReason,
    HealthView,
    InstrumentView,
    Report,
    Role,
    SessionsReply,
    TradesView,
)

log = logging.getLogger("etx.console")

STATIC = Path(__file__).parent / "static"
COOKIE = "etx_console"
LOGIN_COOKIE = "etx_login"
IDLE_S = 8 * 3600  # a console session unused this long is closed
QUEUE_MAX = 2_000  # JSON messages waiting for one browser tab; more and the tab is dropped
TRADES_KEPT = 200
ALERTS_KEPT = 200
DEPTH = 10
ORDERS_PER_SIDE = 25  # orders of each side in the page's order list
INTERVAL_MS = 250
SESSIONS_MAX = 64  # console sessions at once
TEXT_MAX = 256
ACTIONS = ("halt", "resume", "end_of_day", "cancel", "cancel_all", "suspend", "reinstate", "unlock", "disconnect")

_json = msgspec.json.Encoder()


class Tab:
    """One browser tab's WebSocket and its bounded queue."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.sender: asyncio.Task[None] | None = None
        self.dropped = False

    async def send_all(self) -> None:
        while True:
            text = await self.queue.get()
            await self.ws.send_str(text)


class Market:
    """The live picture every console session shows, from the one operator feed the
    console keeps (whichever session carries it): decoded and JSON-encoded once, fanned
    out to every tab."""

    def __init__(self) -> None:
        self.instruments: dict[str, dict[str, Any]] = {}
        self.charts: dict[str, list[list[int]]] = {}
        self.trades: collections.deque[dict[str, Any]] = collections.deque(maxlen=TRADES_KEPT)
        self.alerts: collections.deque[dict[str, Any]] = collections.deque(maxlen=ALERTS_KEPT)
        self.health: dict[str, Any] | None = None
        self.sessions: dict[str, Any] | None = None
        self.blocks: dict[str, Any] | None = None

    def state(self) -> list[dict[str, Any]]:
        """What a new tab gets first: everything as it is now."""
        out: list[dict[str, Any]] = []
        for symbol in sorted(self.instruments):
            out.append({"type": "chart", "instrument": symbol, "points": self.charts.get(symbol, []), "whole": True})
            out.append(self.instruments[symbol])
        out.append({"type": "trades", "trades": list(self.trades), "dropped": 0})
        out += [{"type": "alert", **a} for a in self.alerts]
        if self.health is not None:
            out.append(self.health)
        if self.sessions is not None:
            out.append(self.sessions)
        if self.blocks is not None:
            out.append(self.blocks)
        return out

    def absorb(self, msg: Any) -> dict[str, Any] | None:
        """Keep a feed message; its JSON form for the pages (None: not for them)."""
        t = type(msg)
        if t is InstrumentView:
            obj = instrument_json(msg)
            self.instruments[msg.instrument] = obj
            return obj
        if t is TradesView:
            rows = [trade_json(tr) for tr in msg.trades]
            self.trades.extend(rows)
            return {"type": "trades", "trades": rows, "dropped": msg.dropped}
        if t is ChartView:
            points = self.charts.setdefault(msg.instrument, [])
            if msg.points:
                first = msg.points[0][0]
                while points and points[-1][0] >= first:
                    points.pop()
                points.extend(list(p) for p in msg.points)
            return {"type": "chart", "instrument": msg.instrument, "points": [list(p) for p in msg.points],
                    "whole": False}
        if t is AlertView:
            obj = msgspec.structs.asdict(msg)
            self.alerts.append(obj)
            return {"type": "alert", **obj}
        if t is HealthView:
            self.health = {"type": "health", **msgspec.structs.asdict(msg)}
            return self.health
        if t is BlocksView:
            self.blocks = {"type": "blocks", "offers": [msgspec.structs.asdict(o) for o in msg.offers],
                           "trades": [msgspec.structs.asdict(tr) for tr in msg.trades]}
            return self.blocks
        if t is SessionsReply:
            self.sessions = {"type": "sessions", "sessions": [
                {**msgspec.structs.asdict(s), "role": Role(s.role).name.lower()} for s in msg.sessions]}
            return self.sessions
        return None


class OperatorSession:
    """A logged-on staff user: its gateway session, its answers, and its tabs."""

    def __init__(self, sid: str, client: Client, member: str, user: str, role: int) -> None:
        self.sid = sid
        self.csrf = secrets.token_urlsafe(24)
        self.client = client
        self.member, self.user, self.role = member, user, role
        self.operator = role == Role.OPERATOR
        self.last_seen = time.monotonic()
        self.tabs: set[Tab] = set()
        self.answers: collections.deque[dict[str, Any]] = collections.deque(maxlen=ALERTS_KEPT)
        self.pump: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    def me(self) -> dict[str, Any]:
        return {"type": "me", "member": self.member, "user": self.user, "role": Role(self.role).name.lower(),
                "operator": self.operator}

    def send(self, text: str) -> None:
        """To each tab's queue, never waiting: a tab that does not keep up is dropped."""
        for tab in list(self.tabs):
            try:
                tab.queue.put_nowait(text)
            except asyncio.QueueFull:
                self.drop(tab)

    def publish(self, obj: dict[str, Any]) -> None:
        self.send(_json.encode(obj).decode())

    def drop(self, tab: Tab) -> None:
        """A tab that does not keep up is closed (the page reconnects and starts afresh)."""
        log.warning("console: a browser of %s/%s is not keeping up: dropped", self.member, self.user)
        tab.dropped = True
        self.tabs.discard(tab)
        if tab.sender is not None:
            tab.sender.cancel()
        asyncio.ensure_future(tab.ws.close(code=1013, message=b"too slow"))

    async def run(self, feed: Callable[[Any], None]) -> None:
        """Read the gateway session until it ends: the operator feed (when this session
        carries it) goes to ``feed``, this user's own rejections to its own tabs."""
        try:
            async for msg in self.client.reports():
                if type(msg) is Report:
                    if type(msg.body) is Rejected:
                        obj = {"type": "answer", "ok": False, "text": msg.body.text,
                               "reason": _reason_name(msg.body.reason)}
                        self.answers.append(obj)
                        self.publish(obj)
                else:
                    feed(msg)
        finally:
            self.publish({"type": "closed", "text": "the exchange ended the session"})
            self.closed.set()


def instrument_json(v: InstrumentView) -> dict[str, Any]:
    obj = msgspec.structs.asdict(v)
    obj["type"] = "instrument"
    obj["phase"] = Phase(v.phase).name.lower() if v.phase in Phase._value2member_map_ else str(v.phase)
    obj["bids"] = [[lv.price, lv.qty, lv.orders] for lv in v.bids]
    obj["asks"] = [[lv.price, lv.qty, lv.orders] for lv in v.asks]
    return obj


def trade_json(tr: Any) -> dict[str, Any]:
    return {"ts": tr.ts, "trade_id": tr.trade_id, "instrument": tr.instrument, "price": tr.price, "qty": tr.qty,
            "aggressor": "buy" if tr.aggressor == Side.BUY else "sell", "buyer": tr.buyer, "seller": tr.seller}


def _reason_name(code: int) -> str:
    from engine.messages import Reason

    for enum in (GatewayReason, Reason):
        try:
            return enum(code).name
        except ValueError:
            continue
    return str(code)


class Console:
    """The web application. ``connect(member, user, secret)`` opens a gateway session
    (tests may give their own)."""

    def __init__(self, exchange: tuple[str, int], gateway_ssl: ssl.SSLContext | None = None, *,
                 secure_cookies: bool = False) -> None:
        self.exchange = exchange
        self.gateway_ssl = gateway_ssl
        self.secure_cookies = secure_cookies
        self.sessions: dict[str, OperatorSession] = {}
        self.market = Market()
        self.feeder: OperatorSession | None = None  # the session whose gateway session carries the feed
        self.app = web.Application(middlewares=[self._headers])
        self.app.add_routes([
            web.get("/", self.index),
            web.get("/login", self.login_page),
            web.post("/api/login", self.login),
            web.post("/api/logout", self.logout),
            web.get("/api/me", self.me),
            web.get("/api/orders", self.orders),
            web.post("/api/action", self.action),
            web.get("/ws", self.websocket),
            web.static("/static", STATIC),
        ])
        self.app.on_shutdown.append(self._close_all)
        self._reaper: asyncio.Task[None] | None = None

    # --- security --------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _session(self, request: web.Request) -> OperatorSession | None:
        sid = request.cookies.get(COOKIE, "")
        s = self.sessions.get(sid) if sid else None
        if s is None or s.closed.is_set():
            return None
        if time.monotonic() - s.last_seen > IDLE_S:
            asyncio.ensure_future(self._end(s))
            return None
        s.last_seen = time.monotonic()
        return s

    def _checked(self, request: web.Request) -> OperatorSession:
        """The session of a state-changing request, with its CSRF token checked."""
        s = self._session(request)
        if s is None:
            raise web.HTTPUnauthorized(text="log on first")
        token = request.headers.get("X-CSRF-Token", "")
        if not token or not hmac.compare_digest(token, s.csrf):
            raise web.HTTPForbidden(text="missing or wrong CSRF token")
        return s

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, httponly: bool = True) -> None:
        response.set_cookie(name, value, httponly=httponly, samesite="Strict", secure=self.secure_cookies, path="/")

    # --- pages -------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is None:
            raise web.HTTPFound("/login")
        return web.FileResponse(STATIC / "index.html")

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(STATIC / "login.html")
        # The log-on's CSRF token: readable by the page's script (not HttpOnly), sent
        # back in a header; a page of another site can neither read nor send it.
        self._set_cookie(response, LOGIN_COOKIE, secrets.token_urlsafe(24), httponly=False)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        token = request.cookies.get(LOGIN_COOKIE, "")
        if not token or not hmac.compare_digest(request.headers.get("X-CSRF-Token", ""), token):
            raise web.HTTPForbidden(text="missing or wrong CSRF token")
        try:
            form = await request.json()
            member, user, secret = (str(form.get(k, ""))[:TEXT_MAX] for k in ("member", "user", "secret"))
        except (ValueError, AttributeError):
            raise web.HTTPBadRequest(text="expected JSON with member, user and secret") from None
        if len(self.sessions) >= SESSIONS_MAX:
            return web.json_response({"ok": False, "text": "too many console sessions; try again later"}, status=503)
        client = Client(*self.exchange, member, user, secret, cod=CodMode.OFF, ssl=self.gateway_ssl)
        try:
            ack = await client.connect()
        except LogonError as e:
            return web.json_response({"ok": False, "text": e.text}, status=401)
        except OSError as e:
            return web.json_response({"ok": False, "text": f"the exchange cannot be reached: {e.strerror or e}"},
                                     status=502)
        # Exchange staff only: the gateway answers a QuerySessions of anyone else with
        # NOT_PERMITTED. Operators act; other staff (the read-only staff view) watch.
        try:
            await client.query_sessions()
            staff = True
        except QueryError:
            staff = False
        if not staff:
            await client.close()
            role = Role(ack.role).name.lower()
            return web.json_response({"ok": False, "text": f"the console is for exchange staff; {member}/{user} is a {role}"},
                                     status=403)
        sid = secrets.token_urlsafe(32)
        s = OperatorSession(sid, client, ack.member, ack.user, ack.role)
        self.sessions[sid] = s
        s.pump = asyncio.ensure_future(s.run(self._feed))
        # A gateway session the exchange ends ends the console session (log on again).
        s.pump.add_done_callback(lambda _: asyncio.ensure_future(self._end(s)))
        if self.feeder is None:
            self._carry_feed(s)
        log.info("console: %s/%s logged on (%s)", ack.member, ack.user, Role(ack.role).name.lower())
        response = web.json_response({"ok": True})
        self._set_cookie(response, COOKIE, sid)
        response.del_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        s = self._checked(request)
        await self._end(s)
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def me(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        if s is None:
            raise web.HTTPUnauthorized(text="log on first")
        return web.json_response({"member": s.member, "user": s.user, "role": Role(s.role).name.lower(),
                                  "operator": s.operator, "csrf": s.csrf})

    async def orders(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        if s is None:
            raise web.HTTPUnauthorized(text="log on first")
        instrument = request.query.get("instrument", "")[:16]
        member = request.query.get("member", "")[:64]
        if not instrument:
            return web.json_response({"ok": False, "text": "name the instrument"}, status=400)
        try:
            # The orders near the top of the book (its best levels): the cost of the query
            # is that of the orders shown, however deep the book.
            reply = await s.client.query_top_orders(instrument, DEPTH, member, timeout=10)
        except QueryError as e:
            return web.json_response({"ok": False, "text": e.text}, status=400)
        # The first ORDERS_PER_SIDE of each side, nearest the top: what an operator reads
        # and acts on from the page (the rest: ``etx ops orders``).
        bids = [o for o in reply.orders if o.side == Side.BUY]
        asks = [o for o in reply.orders if o.side != Side.BUY]
        more = reply.more or len(bids) > ORDERS_PER_SIDE or len(asks) > ORDERS_PER_SIDE
        return web.json_response({"ok": True, "more": more, "orders": [
            {"order_id": o.order_id, "member": o.member, "coid": o.coid, "instrument": o.instrument,
             "side": "buy" if o.side == Side.BUY else "sell", "price": o.price, "qty": o.qty, "filled": o.filled,
             "ts": o.ts} for o in bids[:ORDERS_PER_SIDE] + asks[:ORDERS_PER_SIDE]]})

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        s = self._session(request)
        if s is None:
            raise web.HTTPUnauthorized(text="log on first")
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4096)
        await ws.prepare(request)
        tab = Tab(ws)
        for obj in [s.me(), *self.market.state(), *s.answers]:
            tab.queue.put_nowait(_json.encode(obj).decode())
        s.tabs.add(tab)
        tab.sender = asyncio.ensure_future(tab.send_all())
        try:
            async for msg in ws:  # the page sends nothing that matters; this waits for the close
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            s.tabs.discard(tab)
            tab.sender.cancel()
        return ws

    # --- actions -------------------------------------------------------------------------

    async def action(self, request: web.Request) -> web.StreamResponse:
        s = self._checked(request)
        if not s.operator:
            raise web.HTTPForbidden(text="the staff view may not act")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            raise web.HTTPBadRequest(text="expected a JSON object") from None
        name = body.get("action")
        text = str(body.get("text", "")).strip()[:TEXT_MAX]
        if name not in ACTIONS:
            return web.json_response({"ok": False, "text": f"unknown action {str(name)[:40]!r}"}, status=400)
        if not text:
            return web.json_response({"ok": False, "text": "give a reason: it is journaled with the action"}, status=400)
        try:
            answer = await self._act(s, name, body, text)
        except (KeyError, TypeError, ValueError) as e:
            return web.json_response({"ok": False, "text": f"bad {name}: {e}"}, status=400)
        except (TimeoutError, ConnectionError) as e:
            return web.json_response({"ok": False, "text": f"no answer from the exchange: {e!r}"}, status=504)
        s.answers.append({"type": "answer", **answer, "action": name})
        s.publish({"type": "answer", **answer, "action": name})
        log.info("console: %s/%s %s (%s): %s", s.member, s.user, name, text, answer["text"])
        return web.json_response(answer)

    async def _act(self, s: OperatorSession, name: str, body: dict[str, Any], text: str) -> dict[str, Any]:
        client = s.client
        if name == "unlock":
            got = await client.unlock(_str(body, "member"), _str(body, "user"), text)
            return {"ok": True, "text": f"{got.member}/{got.user}: {got.locks} lockouts lifted"}
        if name == "disconnect":
            done = await client.disconnect(int(body["session_id"]), text)
            return {"ok": done.found, "text": f"session {done.session_id} " + ("disconnected" if done.found else
                                                                            "is not connected")}
        cmd = self._command(name, body, text)
        rejected = await client.command(cmd)
        if rejected is None:
            return {"ok": True, "text": "done"}
        return {"ok": False, "text": rejected.text, "reason": _reason_name(rejected.reason)}

    def _command(self, name: str, body: dict[str, Any], text: str) -> Any:
        from engine import messages

        if name == "halt":
            return Halt(_str(body, "instrument"), bool(body.get("cancel_orders", False)), "", text)
        if name == "resume":
            return Resume(_str(body, "instrument"), "", text)
        if name == "end_of_day":
            return EndOfDay("", text)
        if name == "cancel":
            return Cancel(_str(body, "member"), int(body["order_id"]), "", text)
        if name == "cancel_all":
            member = _str(body, "member")
            if not member:
                raise ValueError("name the member whose orders to cancel")
            return MassCancel(member, _str(body, "instrument", ""), int(CancelReason.MASS_CANCEL), "", text)
        if name == "suspend":
            return messages.SuspendMember(_str(body, "member"), bool(body.get("cancel_orders", False)), "", text)
        return messages.ReinstateMember(_str(body, "member"), "", text)

    # --- lifecycle -----------------------------------------------------------------------

    def _carry_feed(self, s: OperatorSession) -> None:
        """The console keeps one operator feed, whoever's session carries it: the
        exchange serves it once, the console decodes and encodes it once."""
        self.feeder = s
        s.client.watch(DEPTH, INTERVAL_MS)

    def _feed(self, msg: Any) -> None:
        obj = self.market.absorb(msg)
        if obj is None:
            return
        text = _json.encode(obj).decode()
        for s in self.sessions.values():
            s.send(text)

    async def _end(self, s: OperatorSession) -> None:
        if self.sessions.pop(s.sid, None) is None:
            return  # ended already
        if self.feeder is s:
            self.feeder = None
            live = next((o for o in self.sessions.values() if not o.closed.is_set()), None)
            if live is not None:
                self._carry_feed(live)
        for tab in list(s.tabs):
            await tab.ws.close()
        await s.client.close()
        if s.pump is not None:
            s.pump.cancel()

    async def _close_all(self, app: web.Application) -> None:
        for s in list(self.sessions.values()):
            await self._end(s)

    async def reap(self) -> None:
        """Close console sessions idle too long, and those whose gateway session ended."""
        while True:
            await asyncio.sleep(30)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if s.closed.is_set() or now - s.last_seen > IDLE_S:
                    await self._end(s)


def _str(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if value is None:
        raise KeyError(key)
    return str(value)[:64]


# --- etx console ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="etx-data", help="the exchange's data folder: finds the running exchange")
    parser.add_argument("--exchange", default="", help="HOST:PORT of the exchange's gateway (instead of --data)")
    parser.add_argument("--cafile", default="", help="the CA (or the exchange's own certificate) for a TLS gateway")
    parser.add_argument("--listen", default="127.0.0.1:7480", help="HOST:PORT the console listens on")
    parser.add_argument("--tls-cert", default="", help="serve HTTPS with this PEM certificate ...")
    parser.add_argument("--tls-key", default="", help="... and this key")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        exchange = exchange_address(args.data, args.exchange)
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--listen: expected HOST:PORT, got {args.listen!r}")
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        https = None
        if args.tls_cert:
            https = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            https.load_cert_chain(args.tls_cert, args.tls_key)
        gateway_ssl = tls_context(args.cafile)
    except (ValueError, OSError, ssl.SSLError) as e:
        print(f"etx console: {e}")
        return 2
    console = Console(exchange, gateway_ssl, secure_cookies=https is not None)
    scheme = "https" if https else "http"
    started = f"etx console on {scheme}://{host}:{port} for the exchange at {exchange[0]}:{exchange[1]}"
    try:
        # aiohttp calls ``print`` once the console listens: the line is the signal that it does.
        web.run_app(console.app, host=host, port=int(port), ssl_context=https,
                    print=lambda _: print(started, flush=True), handle_signals=True)
    except OSError as e:
        print(f"etx console: cannot listen on {host}:{port}: {e.strerror or e}", flush=True)
        return 2
    return 0


async def serve_console(console: Console, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the console in the running loop (tests, benchmarks); returns the runner and
    the port."""
    runner = web.AppRunner(console.app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sock = server.sockets[0]  # type: ignore[attr-defined]
    console._reaper = asyncio.ensure_future(console.reap())
    return runner, int(sock.getsockname()[1])


__all__ = ["Console", "serve_console"]
