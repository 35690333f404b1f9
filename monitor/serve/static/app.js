// IPsec tunnel monitor dashboard: plain JavaScript, no framework, no build step.
// Speaks the /ws protocol of docs/api.md (schema 1): hello, snapshot chunks, tunnel, tunnel_removed,
// counters frames, event, gap, detail. Reconnects by itself with ?since=<last event seq>.
"use strict";

(function () {
  const STATES = ["down", "expiring", "errors", "one-way", "idle", "rekeying", "up"];
  const SEVERITY = Object.fromEntries(STATES.map((s, i) => [s, i]));
  const MAX_ROWS = 500;          // rows rendered at once (the rest are counted, not drawn)
  const MAX_EVENTS = 500;        // event log entries kept in the DOM
  const BAD = new Set(["tunnel_down", "rekey_failed", "negotiation_failed", "integrity_errors"]);
  const GOOD = new Set(["tunnel_up", "rekey_completed"]);
  const WARN = new Set(["acquire", "sa_expired", "replay_errors", "resync", "nat_mapping_changed"]);
  const INFO = new Set(["rekey_started", "state_changed", "tunnel_superseded"]);

  const params = new URLSearchParams(location.search);
  const token = params.get("token") || sessionStorage.getItem("monitor-token") || "";
  if (params.get("token")) sessionStorage.setItem("monitor-token", token);

  const state = {
    tunnels: new Map(),      // id -> tunnel object (+ _exp: server time of hard expiry)
    lastSeq: null,           // last event seq processed
    instance: null,          // the server instance (a restarted server has a new one)
    seq: 0,
    fields: null,            // counters row columns
    ws: null,
    backoff: 500,
    expanded: new Set(),
    events: 0,
    clock: { ts: null, local: 0, rate: 1 },  // server clock estimate (the simulator may run faster)
    filter: { states: new Set(), netns: "", text: "" },
    netns: new Map(),        // name -> the latest netns message's view (hints, xfrm_stat, counts)
    pendingSnapshot: null,
    dirty: true,
  };

  const $ = (sel) => document.querySelector(sel);
  const tbody = $("#tunnels tbody");
  const eventsEl = $("#events");

  // --- formatting --------------------------------------------------------------------------
  function rate(Bps) {
    if (Bps === null || Bps === undefined) return "–";
    const bits = Bps * 8;  // rate_*_bps are bytes per second (counter deltas / seconds); shown in bit/s
    const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
    let v = bits, i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }
  function bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }
  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    const neg = s < 0; s = Math.abs(Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const txt = h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
    return neg ? "-" + txt : txt;
  }
  function clockTime(ts) {
    const d = new Date(ts * 1000);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  // --- server clock (hard-expiry countdowns run on the server's clock) ------------------------
  function observeClock(ts) {
    if (typeof ts !== "number") return;
    const local = performance.now() / 1000, c = state.clock;
    if (c.ts !== null) {
      const dl = local - c.local, dt = ts - c.ts;
      if (dl > 0.5 && dt >= 0) c.rate = Math.min(Math.max(0.7 * c.rate + 0.3 * (dt / dl), 0), 10000);
    }
    if (c.ts === null || ts >= c.ts) { c.ts = ts; c.local = local; }
  }
  function serverNow() {
    const c = state.clock;
    if (c.ts === null) return Date.now() / 1000;
    return c.ts + (performance.now() / 1000 - c.local) * c.rate;
  }

  // --- tunnel table ------------------------------------------------------------------------------
  function putTunnel(t, ts) {
    const old = state.tunnels.get(t.id);
    if (old && !t.sas && old.sas) t.sas = old.sas;
    t._exp = (typeof t.hard_expires_in === "number" && typeof ts === "number") ? ts + t.hard_expires_in : null;
    state.tunnels.set(t.id, t);
    state.dirty = true;
  }
  function applyCounters(msg) {
    const fields = msg.fields || state.fields;
    if (!fields) return;
    const idx = Object.fromEntries(fields.map((f, i) => [f, i]));
    for (const row of msg.rows || []) {
      const t = state.tunnels.get(row[idx.id]);
      if (!t) continue;
      for (const f of fields) if (f !== "id") t[f] = row[idx[f]];
      if ("hard_expires_in" in idx) t._exp = (typeof t.hard_expires_in === "number") ? msg.ts + t.hard_expires_in : null;
      t._flash = performance.now();
    }
    state.dirty = true;
  }
  function matches(t) {
    const f = state.filter;
    if (f.states.size && !f.states.has(t.state)) return false;
    if (f.netns && t.netns !== f.netns) return false;
    if (f.text) {
      const hay = [t.id, t.netns, t.local, t.remote, String(t.reqid), t.state, ikeNames(t.ike),
        ...(t.reasons || []).map((r) => r.code + " " + r.text),
        ...(t.selectors || []).map((s) => JSON.stringify(s))].join(" ").toLowerCase();
      if (!hay.includes(f.text)) return false;
    }
    return true;
  }
  // conn/child of an `ike` block (a tunnel's, or an event's detail.ike); "" when the IKE view has no name for it
  function ikeNames(ike) {
    if (!ike || !ike.conn) return "";
    return ike.child ? `${ike.conn}/${ike.child}` : ike.conn;
  }
  function reasonsCell(t) {
    const td = el("td", "reasons");
    for (const r of t.reasons || []) {
      if (r.code === "established") continue;
      const d = el("div");
      d.appendChild(el("span", "reason-code", r.code));
      d.appendChild(document.createTextNode(" " + (r.text || "")));
      td.appendChild(d);
    }
    for (const h of t.hints || []) td.appendChild(el("div", "sub", "hint: " + (h.text || h.code || h)));
    for (const h of (t.ike && t.ike.hints) || []) {  // configuration advice from the IKE daemon's config
      const d = el("div", "sub ike-hint", `config (${h.code}): ${h.text}`);
      if (h.severity === "warning") d.classList.add("warn");
      td.appendChild(d);
    }
    return td;
  }
  function expiryText(t) {
    if (t._exp === null || t._exp === undefined) return "–";
    return duration(t._exp - serverNow());
  }
  function row(t) {
    const tr = el("tr", "tunnel");
    tr.dataset.id = t.id;
    tr.dataset.state = t.state;
    const st = el("td");
    st.appendChild(el("span", "state s-" + (SEVERITY[t.state] !== undefined ? t.state : "unknown"), t.state));
    tr.appendChild(st);
    const who = el("td", "who");
    const link = el("a", "id", t.id);  // the tunnel page (static/tunnel.js)
    link.href = "#/tunnel/" + encodeURIComponent(t.id);
    link.addEventListener("click", (e) => e.stopPropagation());
    const idBox = el("div");
    idBox.appendChild(link);
    const named = ikeNames(t.ike);
    if (named) idBox.appendChild(el("span", "ike-names", " " + named));
    who.appendChild(idBox);
    who.appendChild(el("div", "sub", `${t.local} ⇄ ${t.remote} · reqid ${t.reqid} · ${t.netns}`));
    tr.appendChild(who);
    tr.appendChild(reasonsCell(t));
    const rin = el("td", "num rate-in", rate(t.rate_in_bps));
    rin.title = `${bytes(t.bytes_in)} in total, ${bytes(t.rate_in_bps)}/s`;
    const rout = el("td", "num rate-out", rate(t.rate_out_bps));
    rout.title = `${bytes(t.bytes_out)} in total, ${bytes(t.rate_out_bps)}/s`;
    tr.appendChild(rin); tr.appendChild(rout);
    const rk = el("td", "num rekeys", String(t.rekeys ?? 0));
    if (t.rekey_failures) rk.appendChild(el("div", "sub warn", `${t.rekey_failures} failed`));
    tr.appendChild(rk);
    const exp = el("td", "num expiry", expiryText(t));
    if (t._exp !== null && t._exp - serverNow() < 120) exp.classList.add("warn");
    tr.appendChild(exp);
    tr.appendChild(el("td", "num since", typeof t.since === "number" ? duration(serverNow() - t.since) : "–"));
    tr.addEventListener("click", () => toggleDetail(t.id));
    return tr;
  }
  function detailRow(t) {
    const tr = el("tr", "detail");
    const td = el("td");
    td.colSpan = 8;
    const sels = (t.selectors || []).map((s) => typeof s === "string" ? s : (s.src || s.saddr || "?") + " → " + (s.dst || s.daddr || "?"));
    td.appendChild(el("div", "sub", "selectors: " + (sels.join(", ") || "–")
      + ` · totals in ${bytes(t.bytes_in)} / out ${bytes(t.bytes_out)}`
      + (t.last_rekey && t.last_rekey.ts ? ` · last rekey ${clockTime(t.last_rekey.ts)}` : "")));
    const tbl = el("table");
    const head = el("tr");
    for (const h of ["SPI", "dir", "bytes", "packets", "added", "soft in", "hard in", "algorithms"]) head.appendChild(el("th", "", h));
    tbl.appendChild(head);
    for (const sa of t.sas || []) {
      const r = el("tr");
      const algs = [sa.aead, sa.enc, sa.auth].filter(Boolean).map((a) => typeof a === "string" ? a : a.name).join(", ");
      for (const v of [sa.spi, sa.direction, bytes(sa.bytes), sa.packets, sa.added ? clockTime(sa.added) : "–",
        duration(sa.soft_expires_in), duration(sa.hard_expires_in), algs]) r.appendChild(el("td", "", v));
      tbl.appendChild(r);
    }
    td.appendChild(tbl);
    tr.appendChild(td);
    return tr;
  }
  function toggleDetail(id) {
    if (state.expanded.has(id)) state.expanded.delete(id);
    else { state.expanded.add(id); send({ op: "detail", ids: [id] }); }
    state.dirty = true;
  }
  function renderSummary() {
    const counts = {};
    for (const t of state.tunnels.values()) counts[t.state] = (counts[t.state] || 0) + 1;
    const box = $("#summary");
    box.textContent = "";
    box.appendChild(el("span", "pill", `${state.tunnels.size} tunnels`));
    for (const s of STATES) if (counts[s]) box.appendChild(el("span", "pill t-" + s, `${counts[s]} ${s}`));
    // netns choices
    const sel = $("#netns-filter");
    const have = new Set([...sel.options].map((o) => o.value));
    for (const t of state.tunnels.values()) if (!have.has(t.netns)) { sel.appendChild(new Option(t.netns, t.netns)); have.add(t.netns); }
  }
  function render() {
    const list = [...state.tunnels.values()].filter(matches);
    list.sort((a, b) => ((SEVERITY[a.state] ?? 99) - (SEVERITY[b.state] ?? 99)) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const frag = document.createDocumentFragment();
    for (const t of list.slice(0, MAX_ROWS)) {
      frag.appendChild(row(t));
      if (state.expanded.has(t.id)) frag.appendChild(detailRow(t));
    }
    tbody.replaceChildren(frag);
    $("#empty").style.display = state.tunnels.size ? "none" : "";
    $("#shown").textContent = list.length > MAX_ROWS ? `showing ${MAX_ROWS} of ${list.length} matching` : `${list.length} shown`;
    renderSummary();
    $("#seq").textContent = String(state.seq);
    state.dirty = false;
  }
  function tick() {
    if (state.dirty) render();
    else {  // countdowns and ages move even without messages
      for (const tr of tbody.querySelectorAll("tr.tunnel")) {
        const t = state.tunnels.get(tr.dataset.id);
        if (!t) continue;
        tr.querySelector(".expiry").textContent = expiryText(t);
        tr.querySelector(".since").textContent = typeof t.since === "number" ? duration(serverNow() - t.since) : "–";
      }
    }
  }
  setInterval(tick, 250);

  // --- event log ----------------------------------------------------------------------------------
  function summary(detail) {
    if (!detail || typeof detail !== "object") return "";
    const parts = [];
    if ("to" in detail) parts.push(`${detail.from} → ${detail.to}`);
    else if ("from" in detail) parts.push(`was ${detail.from}`);
    if (detail.reason && detail.text) parts.push(`${detail.reason}: ${detail.text}`);
    else if (detail.text) parts.push(detail.text);
    for (const [k, v] of Object.entries(detail)) {
      if (k === "from" || k === "to" || v === null || (Array.isArray(v) && !v.length)) continue;
      if (k === "text" || (k === "reason" && detail.text)) continue;
      if (k === "ike" && typeof v === "object") {  // names go beside the tunnel; charon's last failure stays
        if (v.last_error && v.last_error.code) parts.push(`ike_error=${v.last_error.code}`);
        continue;
      }
      if (k === "reasons" && Array.isArray(v)) { parts.push(v.map((r) => r.code || r).join(", ")); continue; }
      parts.push(`${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
    }
    return parts.join(" ");
  }
  function addEvent(ev) {
    if (typeof ev.seq !== "number" || (state.lastSeq !== null && ev.seq <= state.lastSeq)) return;
    state.lastSeq = ev.seq;
    state.seq = Math.max(state.seq, ev.seq);
    const li = el("li");
    li.dataset.seq = ev.seq;
    li.dataset.type = ev.type;
    const cls = BAD.has(ev.type) ? "ev-bad" : GOOD.has(ev.type) ? "ev-good" : WARN.has(ev.type) ? "ev-warn" : INFO.has(ev.type) ? "ev-info" : "";
    li.appendChild(el("span", "ev-time", clockTime(ev.ts) + " "));
    li.appendChild(el("span", "ev-type " + cls, ev.type));
    li.appendChild(document.createTextNode(" " + (ev.tunnel || ev.netns || "") + " "));
    const evNames = ikeNames(ev.detail && ev.detail.ike);
    if (evNames) li.appendChild(el("span", "ike-names", evNames + " "));
    li.appendChild(el("span", "sub", summary(ev.detail)));
    li.title = `#${ev.seq} ${JSON.stringify(ev.detail)}`;
    eventsEl.prepend(li);
    while (eventsEl.children.length > MAX_EVENTS) eventsEl.lastChild.remove();
    state.events++;
    $("#event-count").textContent = String(state.events);
    state.dirty = true;
  }
  function logNote(text) {
    const li = el("li", "restart", text);
    eventsEl.prepend(li);
  }
  async function backfill(since, upto) {
    // events the websocket cannot replay (first load, gaps, restarted server) come from REST
    const headers = token ? { Authorization: "Bearer " + token } : {};
    let from = since;
    for (let i = 0; i < 20 && from < upto; i++) {
      const r = await fetch(`/api/v1/events?since=${from}&limit=1000`, { headers });
      if (!r.ok) return;
      const body = await r.json();
      const evs = (body.events || []).filter((e) => e.seq > from && e.seq <= upto);
      for (const e of evs) addEvent(e);
      if (!body.more || !evs.length) return;
      from = evs[evs.length - 1].seq;
    }
  }

  // --- websocket ------------------------------------------------------------------------------------
  function send(obj) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(obj));
  }
  function setConn(up, text) {
    const c = $("#conn");
    c.className = "conn " + (up ? "up" : "down");
    c.textContent = text;
    document.body.dataset.connected = up ? "true" : "false";
  }
  // One entry per namespace: counts, its hints (lint, xfrm_stat increases), the kernel counters that are not 0.
  function renderNetns() {
    const list = $("#netns-list");
    list.textContent = "";
    const names = [...state.netns.keys()].sort();
    $("#netns-count").textContent = String(names.length);
    for (const name of names) {
      const d = state.netns.get(name);
      const li = el("li", (d.hints || []).length ? "netns has-hints" : "netns");
      li.dataset.netns = name;
      li.appendChild(el("div", "", `${name}: ${d.tunnels} tunnels, ${d.sas} SAs, ${d.policies} policies`));
      for (const h of d.hints || []) {
        const div = el("div", "hint", `${h.code}: ${h.text}`);
        div.dataset.code = h.code;
        li.appendChild(div);
      }
      const moved = Object.entries(d.xfrm_stat || {}).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`);
      if (moved.length) li.appendChild(el("div", "sub", moved.join(" · ")));
      list.appendChild(li);
    }
  }

  const handlers = {
    netns(m) {
      if (m.netns && m.netns.netns) state.netns.set(m.netns.netns, m.netns);
      renderNetns();
    },
    async hello(m) {
      state.fields = m.counters_fields || state.fields;
      $("#server").textContent = m.server || "";
      const newInstance = state.instance !== null && m.instance && m.instance !== state.instance;
      state.instance = m.instance || state.instance;
      if (newInstance && m.resumed) {
        // a restarted server happily resumed from our old seq: start over with a fresh snapshot
        logNote("server restarted");
        state.lastSeq = null;
        state.ws.close();
        return;
      }
      const restarted = newInstance || (state.lastSeq !== null && !m.resumed && m.seq < state.lastSeq);
      if (restarted) { logNote("server restarted"); state.lastSeq = null; }
      state.seq = m.seq;
      if (state.lastSeq === null) {
        const from = Math.max(0, m.seq - 200);
        state.lastSeq = from;
        await backfill(from, m.seq);
        state.lastSeq = Math.max(state.lastSeq, m.seq);
      } else if (!m.resumed) {
        await backfill(state.lastSeq, m.seq);
        state.lastSeq = Math.max(state.lastSeq, m.seq);
      }
    },
    snapshot(m) {
      observeClock(m.ts);
      if (m.chunk === 0) state.pendingSnapshot = new Map();
      const target = state.pendingSnapshot || state.tunnels;
      for (const t of m.tunnels || []) {
        t._exp = (typeof t.hard_expires_in === "number") ? m.ts + t.hard_expires_in : null;
        target.set(t.id, t);
      }
      if (m.last && state.pendingSnapshot) { state.tunnels = state.pendingSnapshot; state.pendingSnapshot = null; }
      state.seq = Math.max(state.seq, m.seq || 0);
      state.dirty = true;
    },
    tunnel(m) { observeClock(m.ts); putTunnel(m.tunnel, m.ts); },
    tunnel_removed(m) { state.tunnels.delete(m.id); state.expanded.delete(m.id); state.dirty = true; },
    counters(m) { observeClock(m.ts); applyCounters(m); },
    event(m) { addEvent(m.event); },
    async gap(m) {
      if (m.reason === "slow_client") await backfill(m.from_seq - 1, m.to_seq);
      else if (m.reason === "too_old") logNote(`events ${m.from_seq}…${m.to_seq} were lost`);
    },
    detail(m) { observeClock(m.ts); for (const t of m.tunnels || []) putTunnel(t, m.ts); },
  };
  // messages are handled strictly in order; a handler's REST back-fill finishes before the next message
  const queue = [];
  let draining = false;
  async function drain() {
    if (draining) return;
    draining = true;
    try {
      while (queue.length) {
        const job = queue.shift();
        try { await job(); } catch (e) { console.error(e); }
      }
    } finally { draining = false; }
  }
  // The token goes in the Sec-WebSocket-Protocol header ("bearer.<token>", docs/api.md), not in the URL
  // (URLs end up in logs and proxies); a token a subprotocol cannot carry falls back to ?token=.
  function openSocket(q) {
    const base = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws?";
    if (!token) return new WebSocket(base + q);
    try {
      return new WebSocket(base + q, ["monitor.v1", "bearer." + token]);
    } catch (err) {
      q.set("token", token);
      return new WebSocket(base + q);
    }
  }
  function connect() {
    const q = new URLSearchParams();
    if (state.lastSeq !== null) q.set("since", String(state.lastSeq));
    const ws = openSocket(q);
    state.ws = ws;
    ws.onopen = () => { setConn(true, "live"); state.backoff = 500; };
    ws.onmessage = (e) => {
      let m;
      try { m = JSON.parse(e.data); } catch (err) { return; }
      const h = handlers[m.type];
      if (h) { queue.push(() => h(m)); drain(); }
    };
    ws.onclose = (e) => {
      state.ws = null;
      const wait = state.backoff;
      state.backoff = Math.min(state.backoff * 2, 5000);
      setConn(false, e.code === 4008 ? "too slow, reconnecting…" : `reconnecting in ${(wait / 1000).toFixed(1)} s…`);
      setTimeout(connect, wait);
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  // --- filters --------------------------------------------------------------------------------------------
  const chips = $("#state-filter");
  for (const s of STATES) {
    const b = el("button", "chip", s);
    b.type = "button";
    b.dataset.state = s;
    b.addEventListener("click", () => {
      if (state.filter.states.has(s)) { state.filter.states.delete(s); b.classList.remove("on", "s-" + s); }
      else { state.filter.states.add(s); b.classList.add("on", "s-" + s); }
      state.dirty = true;
    });
    chips.appendChild(b);
  }
  $("#netns-filter").addEventListener("change", (e) => { state.filter.netns = e.target.value; state.dirty = true; });
  $("#text-filter").addEventListener("input", (e) => { state.filter.text = e.target.value.trim().toLowerCase(); state.dirty = true; });

  window.monitorDashboard = state;  // for debugging and the browser test
  connect();
})();
