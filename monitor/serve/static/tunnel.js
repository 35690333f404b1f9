// The tunnel page of the dashboard: #/tunnel/<id> shows one tunnel's SAs and selectors (REST
// /api/v1/tunnels/{id}), its state timeline over 24 h, 7 d or 30 d, a rate sparkline, its flaps and its events
// (/api/v1/tunnels/{id}/history, docs/api.md). Plain JavaScript, no build step; refreshed every 10 s.
"use strict";

(function () {
  const COLOURS = { up: "#2e7d32", idle: "#78909c", "one-way": "#ef6c00", rekeying: "#1565c0",
    expiring: "#ad1457", errors: "#c62828", down: "#b71c1c" };
  const WINDOWS = { "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
  const page = document.getElementById("tunnel-page");
  const main = document.querySelector("main");
  let current = null;   // { id, window, timer }

  function token() { return sessionStorage.getItem("monitor-token") || ""; }
  async function getJSON(path) {
    const headers = token() ? { Authorization: "Bearer " + token() } : {};
    const r = await fetch(path, { headers });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((body.error && body.error.message) || `HTTP ${r.status}`);
    return body;
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    return e;
  }
  function dur(s) {
    if (typeof s !== "number") return "–";
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  function when(ts) { return new Date(ts * 1000).toLocaleString(); }

  // one <rect data-state=...> per interval, clipped to [from, to]
  function timeline(doc) {
    const W = 1000, H = 28;
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "timeline", preserveAspectRatio: "none",
      role: "img", "aria-label": "state timeline" });
    const span = doc.to - doc.from;
    for (const iv of doc.intervals) {
      const a = Math.max(iv.start, doc.from), b = Math.min(iv.end === null ? doc.to : iv.end, doc.to);
      if (b <= a) continue;
      const r = svg("rect", { x: ((a - doc.from) / span) * W, y: 0, width: Math.max(1, ((b - a) / span) * W),
        height: H, fill: COLOURS[iv.state] || "#999" });
      r.dataset.state = iv.state;
      const t = svg("title", {});
      t.textContent = `${iv.state} ${when(a)} – ${iv.end === null ? "now" : when(b)} (${dur(b - a)})`;
      r.appendChild(t);
      box.appendChild(r);
    }
    return box;
  }
  function sparkline(doc) {
    const W = 1000, H = 40;
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "sparkline", preserveAspectRatio: "none",
      role: "img", "aria-label": "bytes per second" });
    const pts = doc.rates || [];
    const max = Math.max(1, ...pts.map((p) => Math.max(p[1], p[2])));
    const span = doc.to - doc.from;
    for (const [i, colour] of [[1, "#1565c0"], [2, "#ef6c00"]]) {
      const line = pts.map((p) => `${(((p[0] - doc.from) / span) * W).toFixed(1)},${(H - (p[i] / max) * (H - 2)).toFixed(1)}`);
      if (line.length) box.appendChild(svg("polyline", { points: line.join(" "), fill: "none", stroke: colour, "stroke-width": 1.5 }));
    }
    return box;
  }

  function render(t, doc, error) {
    const frag = document.createDocumentFragment();
    const head = el("div", "tp-head");
    const back = el("a", "tp-back", "← all tunnels");
    back.href = "#/";
    head.appendChild(back);
    head.appendChild(el("h2", "", t ? t.id : current.id));
    if (t && t.ike && t.ike.conn) head.appendChild(el("span", "ike-names", t.ike.child ? `${t.ike.conn}/${t.ike.child}` : t.ike.conn));
    if (t) head.appendChild(el("span", "state s-" + t.state, t.state));
    frag.appendChild(head);
    if (t) {
      frag.appendChild(el("p", "sub", `${t.local} ⇄ ${t.remote} · reqid ${t.reqid} · netns ${t.netns} · ${t.rekeys} rekeys`
        + (t.rekey_failures ? ` (${t.rekey_failures} failed)` : "")));
      const sels = (t.selectors || []).map((s) => (s.src || "?") + " → " + (s.dst || "?"));
      frag.appendChild(el("p", "sub", "selectors: " + (sels.join(", ") || "–")));
      const tbl = el("table", "tp-sas");
      const hr = el("tr");
      for (const h of ["SPI", "dir", "bytes", "packets", "algorithms"]) hr.appendChild(el("th", "", h));
      tbl.appendChild(hr);
      for (const sa of t.sas || []) {
        const r = el("tr");
        for (const v of [sa.spi, sa.direction, String(sa.bytes), String(sa.packets), [sa.aead, sa.enc, sa.auth].filter(Boolean).join(", ")]) r.appendChild(el("td", "", v));
        tbl.appendChild(r);
      }
      frag.appendChild(tbl);
    } else {
      frag.appendChild(el("p", "muted", "not in the kernel now"));
    }
    const tabs = el("div", "tp-windows");
    for (const w of Object.keys(WINDOWS)) {
      const b = el("button", "chip" + (w === current.window ? " on" : ""), w);
      b.type = "button";
      b.addEventListener("click", () => { current.window = w; load(); });
      tabs.appendChild(b);
    }
    frag.appendChild(tabs);
    if (doc) {
      const stats = el("p", "tp-stats");
      stats.textContent = `flaps ${doc.flaps} · uptime ${doc.uptime_pct === null ? "–" : doc.uptime_pct.toFixed(2) + " %"}`
        + ` · down ${dur(doc.downtime)} · longest outage ${dur(doc.longest_outage)}`;
      stats.dataset.flaps = String(doc.flaps);
      frag.appendChild(stats);
      frag.appendChild(timeline(doc));
      frag.appendChild(sparkline(doc));
      const list = el("ol", "tp-events");
      for (const e of doc.events.slice(-200).reverse()) {
        const li = el("li", "", `${when(e.ts)} ${e.type}` + (e.detail && e.detail.inferred ? " (inferred)" : "")
          + (e.detail && e.detail.reason ? ` – ${e.detail.reason}` : ""));
        li.dataset.seq = String(e.seq);
        list.appendChild(li);
      }
      frag.appendChild(list);
    } else {
      frag.appendChild(el("p", "warn", "history: " + (error || "loading…")));
    }
    page.replaceChildren(frag);
  }

  async function load() {
    if (!current) return;
    const id = current.id;
    const path = "/api/v1/tunnels/" + encodeURIComponent(id);
    const [t, h] = await Promise.allSettled([getJSON(path), getJSON(path + "/history?from=" + current.window)]);
    if (!current || current.id !== id) return;
    render(t.status === "fulfilled" ? t.value.tunnel : null, h.status === "fulfilled" ? h.value : null,
      h.status === "rejected" ? String(h.reason.message || h.reason) : null);
  }

  function route() {
    const m = location.hash.match(/^#\/tunnel\/(.+)$/);
    if (current) { clearInterval(current.timer); current = null; }
    if (!m) { page.hidden = true; main.hidden = false; return; }
    current = { id: decodeURIComponent(m[1]), window: "24h", timer: setInterval(load, 10000) };
    page.hidden = false;
    main.hidden = true;
    page.replaceChildren(el("p", "muted", "loading…"));
    load();
  }
  window.addEventListener("hashchange", route);
  route();
})();
