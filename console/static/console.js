// etx console: the page. Live data arrive as JSON over the WebSocket /ws (one message
// per view: instrument, trades, chart, alert, health, sessions, answer); actions go as
// POST /api/action with the session's CSRF token, after a confirmation with a reason.
"use strict";

const state = {
  me: null, csrf: "", selected: "", instruments: {}, charts: {}, trades: [], plot: null, plotFor: "",
  symbols: [], sessions: [], orders: [],
};
const $ = (id) => document.getElementById(id);

function yuan(fen) {
  if (fen === null || fen === undefined || fen === 0) return "—";
  const sign = fen < 0 ? "-" : "";
  const v = Math.abs(fen);
  return sign + Math.floor(v / 100).toLocaleString("en") + "." + String(v % 100).padStart(2, "0");
}
function tonnes(q) { return q.toLocaleString("en"); }
function time(ns) { return new Date(ns / 1e6).toISOString().slice(11, 19); }
// Tables are filled in place: rows are reused and a cell is written only when its text
// changes, so a live update costs the browser little layout and paint. With ``button``,
// each row ends in a button of that label (one click handler per table, see ``onRow``).
function fill(table, rows, button) {
  const body = table.tBodies[0];
  while (body.rows.length > rows.length) body.deleteRow(-1);
  rows.forEach((r, i) => {
    const row = body.rows[i] || body.insertRow();
    if (row.className !== (r.cls || "")) row.className = r.cls || "";
    r.cells.forEach((text, j) => {
      const td = row.cells[j] || row.insertCell();
      const value = String(text);
      if (td.textContent !== value) td.textContent = value;
      const want = (r.cellCls && r.cellCls[j]) || "";
      if (td.className !== want) td.className = want;
    });
    if (button && row.cells.length === r.cells.length) {
      const b = document.createElement("button");
      b.textContent = button;
      b.className = "act danger";
      row.insertCell().append(b);
    }
  });
}

// One click handler per table: ``handle(index)`` gets the body row's index (of a button
// click when ``buttonsOnly``).
function onRow(table, handle, buttonsOnly) {
  table.tBodies[0].addEventListener("click", (event) => {
    if (buttonsOnly && !event.target.closest("button")) return;
    const row = event.target.closest("tr");
    if (row) handle(row.sectionRowIndex);
  });
}

// --- live data ---------------------------------------------------------------------

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => { $("link").textContent = "live"; $("link").className = "badge live"; };
  ws.onclose = () => {
    $("link").textContent = "reconnecting"; $("link").className = "badge";
    setTimeout(async () => {
      const me = await fetch("/api/me", {credentials: "same-origin"});
      if (me.status === 401) { location.assign("/login"); return; }
      connect();
    }, 1000);
  };
  ws.onmessage = (event) => { take(JSON.parse(event.data)); scheduleRender(); };
}

function take(msg) {
  switch (msg.type) {
    case "me": break;
    case "instrument":
      state.instruments[msg.instrument] = msg;
      if (!state.selected) select(msg.instrument);
      dirty.instruments = true;
      if (msg.instrument === state.selected) { dirty.instrument = true; ordersSoon(); }
      break;
    case "chart": {
      // The whole day at first, then the seconds from the last one sent (they replace ours).
      let points = state.charts[msg.instrument] || [];
      if (msg.whole) points = [];
      if (msg.points.length) {
        const first = msg.points[0][0];
        while (points.length && points[points.length - 1][0] >= first) points.pop();
        points = points.concat(msg.points);
      }
      state.charts[msg.instrument] = points;
      if (msg.instrument === state.selected) dirty.chart = true;
      break;
    }
    case "trades":
      for (const t of msg.trades) state.trades.push(t);
      if (state.trades.length > 400) state.trades.splice(0, state.trades.length - 200);
      dirty.trades = true;
      break;
    case "alert": addItem("alerts", `${time(msg.ts)} ${msg.kind}: ${msg.text}`, "alert"); break;
    case "answer": addItem("answers", `${msg.action || ""} ${msg.ok ? "done" : "refused"}: ${msg.text}`, msg.ok ? "ok" : "error"); break;
    case "health": dirty.health = msg; break;
    case "sessions": dirty.sessions = msg.sessions; break;
    case "blocks": dirty.blocks = msg; break;
    case "closed": $("link").textContent = "session ended"; break;
  }
}

// Rendering is coalesced: at most once every RENDER_MS, whatever the rate of messages.
const RENDER_MS = 500;
const dirty = {instruments: false, instrument: false, chart: false, trades: false, health: null, sessions: null, blocks: null};
let renderAt = 0, renderTimer = null;
function scheduleRender() {
  if (renderTimer !== null) return;
  const wait = Math.max(0, renderAt + RENDER_MS - Date.now());
  renderTimer = setTimeout(() => { renderTimer = null; requestAnimationFrame(renderDirty); }, wait);
}
function renderDirty() {
  renderAt = Date.now();
  if (dirty.instruments) renderInstruments();
  if (dirty.instrument) renderInstrument();
  if (dirty.chart) renderChart();
  if (dirty.trades) renderTrades();
  if (dirty.health) renderHealth(dirty.health);
  if (dirty.sessions) renderSessions(dirty.sessions);
  if (dirty.blocks) renderBlocks(dirty.blocks);
  dirty.instruments = dirty.instrument = dirty.chart = dirty.trades = false;
  dirty.health = dirty.sessions = dirty.blocks = null;
}

function addItem(list, text, cls) {
  const li = document.createElement("li");
  li.textContent = text;
  li.className = cls;
  const ol = $(list);
  ol.prepend(li);
  while (ol.children.length > 100) ol.lastChild.remove();
}

// --- rendering ---------------------------------------------------------------------

function select(symbol) {
  state.selected = symbol;
  dirty.instrument = dirty.chart = dirty.trades = dirty.instruments = true;
  scheduleRender();
  refreshOrders();
}

function renderInstruments() {
  state.symbols = Object.keys(state.instruments).sort();
  fill($("instruments"), state.symbols.map((symbol) => {
    const v = state.instruments[symbol];
    return {cls: symbol === state.selected ? "selected" : "", cells: [symbol, yuan(v.last), v.halted ? "halted" : v.phase],
            cellCls: [null, null, v.halted ? "halted" : ""]};
  }));
}

function renderInstrument() {
  const v = state.instruments[state.selected];
  if (!v) return;
  $("symbol").textContent = v.instrument;
  $("status").textContent = `${v.halted ? "HALTED" + (v.halt_text ? ": " + v.halt_text : "") : v.phase} · reference ${yuan(v.ref_price)} · band ${yuan(v.band_low)} – ${yuan(v.band_high)} · seq ${v.seq}`;
  $("status").className = v.halted ? "halted" : "";
  $("stats").textContent = `open ${yuan(v.open)} · high ${yuan(v.high)} · low ${yuan(v.low)} · last ${yuan(v.last)} · VWAP ${yuan(v.vwap)} · volume ${tonnes(v.volume)} t · value ${yuan(v.value)} · ${v.trades} trades`;
  const rows = [];
  const priceCls = [null, null, "price", null, null];
  for (let i = v.asks.length - 1; i >= 0; i--) {
    const [price, qty, orders] = v.asks[i];
    rows.push({cls: "ask", cells: ["", "", yuan(price), tonnes(qty), orders], cellCls: priceCls});
  }
  for (const [price, qty, orders] of v.bids) {
    rows.push({cls: "bid", cells: [orders, tonnes(qty), yuan(price), "", ""], cellCls: priceCls});
  }
  fill($("ladder"), rows);
}

function renderChart() {
  const v = state.instruments[state.selected];
  if (!v || typeof uPlot === "undefined") return;
  const points = state.charts[state.selected] || [];
  const xs = points.map((p) => p[0]);
  const price = points.map((p) => p[1] / 100);
  const low = xs.map(() => v.band_low / 100), high = xs.map(() => v.band_high / 100), ref = xs.map(() => v.ref_price / 100);
  const data = [xs, price, low, high, ref];
  const now = Date.now() / 1000;
  if (state.plot && state.plotFor === state.selected) { state.plot.setData(data); return; }
  if (state.plot) state.plot.destroy();
  state.plotFor = state.selected;
  state.plot = new uPlot({
    width: 520, height: 240, title: `${state.selected}: the day's prices`,
    scales: {
      // The span of the day's trades, with five minutes each side (none yet: the last hour).
      x: {time: true, range: (u, min, max) => (min === null || max === null ? [now - 3600, now] : [min - 300, max + 300])},
      y: {range: () => [v.band_low / 100 * 0.995, v.band_high / 100 * 1.005]},
    },
    series: [
      {},
      {label: "price", stroke: "#1f5fbf", width: 2},
      {label: "band low", stroke: "#c33", dash: [6, 4]},
      {label: "band high", stroke: "#c33", dash: [6, 4]},
      {label: "reference", stroke: "#888", dash: [2, 4]},
    ],
  }, data, $("chart"));
}

function renderTrades() {
  const mine = state.trades.filter((t) => t.instrument === state.selected).slice(-30).reverse();
  fill($("trades"), mine.map((t) => ({cells: [time(t.ts), yuan(t.price), tonnes(t.qty), t.buyer, t.seller, t.aggressor],
                                      cellCls: [null, "price"]})));
}

function renderBlocks(b) {
  fill($("block-offers"), b.offers.map((o) => ({cells: [String(o.offer_id), o.member, o.instrument,
    o.side === 1 ? "buy" : "sell", yuan(o.price), tonnes(o.qty),
    `${o.partial ? "parts allowed" : "all or nothing"}${o.named ? ", named counterparty" : ""}`], cellCls: [null, null, null, null, "price"]})));
  fill($("block-trades"), b.trades.slice().reverse().map((t) => ({cells: [time(t.ts), t.instrument, yuan(t.price),
    tonnes(t.qty), t.buyer, t.seller, String(t.offer_id)], cellCls: [null, null, "price"]})));
}

function renderHealth(h) {
  const lag = h.settlement_lag < 0 ? "—" : h.settlement_lag.toLocaleString("en");
  $("health").textContent = `seq ${h.last_seq.toLocaleString("en")} · ${h.commands_per_s.toLocaleString("en")} commands/s` +
    ` · batch p50 ${h.batch_p50_us} µs p99 ${h.batch_p99_us} µs · fsync p50 ${h.fsync_p50_us} µs p99 ${h.fsync_p99_us} µs` +
    ` · settlement lag ${lag} · snapshot age ${h.snapshot_age_s < 0 ? "—" : h.snapshot_age_s + " s"}` +
    ` · market data lag ${h.md_lag_ms < 0 ? "—" : h.md_lag_ms + " ms"} · ${h.sessions} sessions, ${h.connecting} connecting`;
}

function renderSessions(sessions) {
  state.sessions = sessions;
  fill($("sessions"), sessions.map((s) => ({cells: [
    s.session_id, s.member, s.user, s.role, s.peer, time(s.since), s.commands_per_s, s.refused_per_s, s.commands,
    s.cod ? "on" : "off"]})), operator() ? "Disconnect" : null);
}

function operator() { return Boolean(state.me && state.me.operator); }

// The open orders of the selected instrument follow its changes, at most every 2 s.
let ordersTimer = null;
function ordersSoon() {
  if (ordersTimer !== null) return;
  ordersTimer = setTimeout(() => {
    ordersTimer = null;
    if ($("orders").matches(":hover")) ordersSoon(); else refreshOrders();
  }, 2000);
}

// The orders nearest the top of the book (the console sends the first 25 of each side;
// a member's orders anywhere are one action away: "Cancel all orders"). The list is not
// refreshed while the pointer is over it, so a row does not move under a click.
async function refreshOrders() {
  if (!state.selected) return;
  const response = await fetch("/api/orders?instrument=" + encodeURIComponent(state.selected), {credentials: "same-origin"});
  const answer = await response.json();
  const orders = answer.orders || [];
  state.orders = orders;
  fill($("orders"), orders.map((o) => ({cells: [o.order_id, o.member, o.side, yuan(o.price), tonnes(o.qty), tonnes(o.filled)],
                                        cellCls: [null, null, null, "price"]})), operator() ? "Cancel" : null);
  $("orders-more").hidden = !answer.more;
}

// --- actions ------------------------------------------------------------------------

function confirmed(question, withCancel) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-what").textContent = question;
    $("confirm-reason").value = "";
    $("confirm-cancel-orders").checked = false;
    $("confirm-cancel-label").hidden = !withCancel;
    dialog.onclose = () => resolve(dialog.returnValue === "yes" ?
      {text: $("confirm-reason").value, cancel_orders: $("confirm-cancel-orders").checked} : null);
    dialog.showModal();
  });
}

async function act(action, fields, question, withCancel) {
  const answer = await confirmed(question, withCancel);
  if (!answer) return;
  if (!answer.text.trim()) { addItem("answers", `${action}: a reason is needed`, "error"); return; }
  const body = Object.assign({action: action, text: answer.text}, fields);
  if (withCancel) body.cancel_orders = answer.cancel_orders;
  const response = await fetch("/api/action", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": state.csrf},
    body: JSON.stringify(body),
  });
  if (!response.ok && response.status !== 400) {
    addItem("answers", `${action} refused (${response.status}): ${await response.text()}`, "error");
  }
  if (action === "cancel" || action === "cancel_all" || action === "suspend") setTimeout(refreshOrders, 300);
}

function wire() {
  onRow($("instruments"), (i) => select(state.symbols[i]));
  onRow($("sessions"), (i) => {
    const s = state.sessions[i];
    act("disconnect", {session_id: s.session_id}, `Disconnect session ${s.session_id} (${s.member}/${s.user} from ${s.peer})?`);
  }, true);
  onRow($("orders"), (i) => {
    const o = state.orders[i];
    act("cancel", {order_id: o.order_id, member: o.member},
      `Cancel order ${o.order_id} of ${o.member} (${o.side} ${o.qty} t at ${yuan(o.price)})?`);
  }, true);
  $("halt").addEventListener("click", () => act("halt", {instrument: state.selected}, `Halt ${state.selected}?`, true));
  $("resume").addEventListener("click", () => act("resume", {instrument: state.selected}, `Resume ${state.selected}?`));
  $("eod").addEventListener("click", () => act("end_of_day", {}, "End the trading day? Resting orders expire and the closing prices are fixed."));
  $("cancel-all").addEventListener("click", () => {
    const member = $("member-id").value.trim();
    if (member) act("cancel_all", {member: member, instrument: ""}, `Cancel all orders of ${member}, in every instrument?`);
  });
  $("suspend").addEventListener("click", () => {
    const member = $("member-id").value.trim();
    if (member) act("suspend", {member: member}, `Suspend the trading of ${member}?`, true);
  });
  $("reinstate").addEventListener("click", () => {
    const member = $("member-id").value.trim();
    if (member) act("reinstate", {member: member}, `Reinstate the trading of ${member}?`);
  });
  $("unlock").addEventListener("click", () => {
    const who = $("unlock-user").value.trim();
    const cut = who.lastIndexOf("/");
    if (cut > 0) act("unlock", {member: who.slice(0, cut), user: who.slice(cut + 1)}, `Unlock ${who}?`);
  });
  $("refresh-orders").addEventListener("click", refreshOrders);
  $("logout").addEventListener("click", async () => {
    await fetch("/api/logout", {method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": state.csrf}});
    location.assign("/login");
  });
}

async function start() {
  const response = await fetch("/api/me", {credentials: "same-origin"});
  if (response.status === 401) { location.assign("/login"); return; }
  state.me = await response.json();
  state.csrf = state.me.csrf;
  $("who").textContent = `${state.me.member}/${state.me.user} (${state.me.role}${state.me.operator ? "" : ", view only"})`;
  if (!state.me.operator) for (const el of document.querySelectorAll("[data-needs=operator]")) el.hidden = true;
  wire();
  connect();
}

start();
