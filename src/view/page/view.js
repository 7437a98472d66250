// The tidings view: renders each snapshot that /api/events sends.
// Everything from the bus is inserted as text (textContent), never as HTML.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => token ? path + "?token=" + encodeURIComponent(token) : path;
document.getElementById("link-snapshot").href = withToken("api/snapshot");
document.getElementById("link-asyncapi").href = withToken("asyncapi.json");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const ms = (d) => d ? d.secs * 1e3 + d.nanos / 1e6 : 0;
function dur(d) {
  const m = ms(d);
  if (m >= 1000) return (m / 1000).toFixed(1) + " s";
  if (m >= 1) return m.toFixed(1) + " ms";
  return (m * 1000).toFixed(0) + " µs";
}
function rate(r) {
  if (r === undefined || r === null) return "–";
  if (r >= 1e6) return (r / 1e6).toFixed(1) + "M/s";
  if (r >= 1e3) return (r / 1e3).toFixed(1) + "k/s";
  return (r >= 10 ? r.toFixed(0) : r.toFixed(1)) + "/s";
}
const cell = (v, cls) => el("td", cls ? { class: cls } : {}, v);
const warnIf = (v, cls) => cell(rate(v), v > 0 ? cls : "");

function renderTopics(snap) {
  const table = document.getElementById("topics");
  const heads = ["topic / subscription", "kind", "policy", "queue (high-water)", "lag", "published / delivered",
    "handled", "dropped", "failed", "dead-lettered", "breaker", "totals"];
  const rows = [el("tr", {}, ...heads.map((h, i) => el("th", i < 3 ? { class: "l" } : {}, h)))];
  const rates = snap.rates || { topics: {}, subscriptions: {} };
  for (const t of snap.stats.topics) {
    const tr = rates.topics[t.topic] || {};
    rows.push(el("tr", { class: "topic", "data-topic": t.topic, "data-published": t.published },
      el("td", { class: "l", colspan: 3 }, t.topic), cell(""), cell(""), cell(rate(tr.published)),
      cell(""), cell(""), cell(""), cell(""), cell(""), cell(t.published + " published")));
    for (const s of t.subscriptions.concat(t.draining)) {
      const r = rates.subscriptions[String(s.id)] || {};
      const fill = s.capacity ? Math.min(100, 100 * s.queue_depth / s.capacity) : 0;
      const bar = el("span", { class: "bar" + (fill >= 100 ? " full" : "") }, el("i", { style: "width:" + fill + "%" }));
      const lag = s.queue_depth + " ev" + (r.lag_seconds != null ? ", " + r.lag_seconds.toFixed(2) + " s" : "");
      const breaker = s.breaker ? el("span", { class: "pill " + kebab(s.breaker) }, kebab(s.breaker)) : "";
      rows.push(el("tr", { class: "sub", "data-subscription": s.name, "data-delivered": s.delivered },
        cell(s.name + (s.closed ? " (closed)" : ""), "l"), cell(s.kind.toLowerCase(), "l"), cell(kebab(s.policy), "l"),
        el("td", {}, bar, s.queue_depth + "/" + s.capacity + " (" + s.high_water + ")"), cell(lag),
        cell(rate(r.delivered)), cell(rate(r.handled)), warnIf(r.dropped, "nz-warn"), warnIf(r.failed, "nz-bad"),
        warnIf(r.dead_lettered, "nz-bad"), el("td", {}, breaker),
        cell(s.delivered + " delivered" + (s.dead_lettered ? ", " + s.dead_lettered + " dead" : ""))));
    }
  }
  table.replaceChildren(...rows);
}

const kebab = (s) => String(s).replace(/([a-z])([A-Z])/g, "$1-$2").toLowerCase();

function renderHealth(snap) {
  const box = document.getElementById("health");
  const h = snap.health;
  const items = [];
  for (const f of h.findings) {
    const advice = (snap.advice || {})[f.kind];
    items.push(el("div", { class: "finding" + (f.recent ? "" : " old"), "data-kind": f.kind },
      kebab(f.kind) + " in `" + f.subscription + "` on `" + f.topic + "`: " + f.count + " time(s), worst " + dur(f.worst),
      advice ? el("div", { class: "advice" }, advice) : null));
  }
  for (const p of h.pools) {
    const who = p.holders.map((x) => "`" + x.subscription + "` ×" + x.workers).join(", ");
    items.push(el("div", { class: "finding" + (p.recent ? "" : " old"), "data-kind": "PoolExhausted" },
      kebab(p.pool) + " pool exhausted " + p.count + " time(s), longest " + dur(p.worst) + (who ? "; held by " + who : "")));
  }
  for (const c of h.callback_panics) {
    items.push(el("div", { class: "finding" + (c.recent ? "" : " old") }, "on_done callbacks panicked on `" + c.topic + "`: " + c.count));
  }
  box.replaceChildren(...(items.length ? items : [el("span", { class: "healthy" }, "healthy: no findings")]));
}

function renderPools(snap) {
  const pools = snap.stats.pools;
  document.getElementById("pools-section").hidden = pools.length === 0;
  const rows = [el("tr", {}, ...["pool", "workers", "busy", "waiting runners", "times exhausted", "holders"].map((h, i) => el("th", i === 0 || i === 5 ? { class: "l" } : {}, h)))];
  for (const p of pools) {
    rows.push(el("tr", {}, cell(kebab(p.pool), "l"), cell(p.workers + "/" + p.max_workers), cell(p.busy),
      cell(p.queued), cell(p.exhausted, p.exhausted ? "nz-bad" : ""),
      cell(p.holders.map((x) => x.subscription + " ×" + x.workers).join(", "), "l")));
  }
  document.getElementById("pools").replaceChildren(el("table", {}, ...rows));
}

function renderGraph(snap) {
  const edges = [];
  for (const t of snap.stats.topics) {
    for (const c of t.caused_by) if (c.topic) edges.push([c.topic, t.topic, c.events]);
  }
  const box = document.getElementById("graph");
  if (!edges.length) { box.replaceChildren(el("span", { class: "dim" }, "no event has caused another yet")); return; }
  const names = [...new Set(edges.flatMap((e) => [e[0], e[1]]))];
  const W = 900, H = Math.max(320, 70 * names.length), R = Math.min(W, H) / 2 - 40, cx = W / 2, cy = H / 2;
  const at = {};
  names.forEach((n, i) => { const a = 2 * Math.PI * i / names.length - Math.PI / 2; at[n] = [cx + R * Math.cos(a), cy + R * Math.sin(a)]; });
  const NS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs, text) => { const n = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text !== undefined) n.textContent = text; return n; };
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: "causes" });
  const defs = svg("defs", {});
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#3560c9" }));
  defs.append(marker); root.append(defs);
  for (const [from, to, n] of edges) {
    const [x1, y1] = at[from], [x2, y2] = at[to];
    const dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy) || 1, k = 34 / len;
    const mx = (x1 + x2) / 2 - dy * 0.15, my = (y1 + y2) / 2 + dx * 0.15;
    root.append(svg("path", { class: "edge", d: `M ${x1 + dx * k} ${y1 + dy * k} Q ${mx} ${my} ${x2 - dx * k} ${y2 - dy * k}`, "marker-end": "url(#arrow)", "stroke-width": 1 + Math.min(4, Math.log10(n + 1)) }));
    root.append(svg("text", { class: "count", x: mx, y: my }, String(n)));
  }
  for (const n of names) {
    const [x, y] = at[n];
    root.append(svg("ellipse", { class: "node", cx: x, cy: y, rx: Math.max(40, n.length * 3.6), ry: 16 }));
    root.append(svg("text", { x, y: y + 4, "text-anchor": "middle", "data-node": n }, n));
  }
  box.replaceChildren(root);
}

function renderDeadLetters(snap) {
  const rows = [el("tr", {}, ...["published", "topic", "subscription", "seq", "attempts", "error", "payload"].map((h) => el("th", { class: "l" }, h)))];
  const shown = snap.dead_letters.slice(-DEAD_LETTERS_SHOWN).reverse();
  for (const d of shown) {
    const payload = d.payload === null ? el("span", { class: "dim" }, "(not serializable)") : el("code", {}, JSON.stringify(d.payload));
    rows.push(el("tr", { class: "dead-letter", "data-topic": d.topic }, cell(new Date(d.published_at_ms).toLocaleTimeString(), "l"),
      cell(d.topic, "l"), cell(d.subscription, "l"), cell(d.seq, "l"), cell(d.attempts, "l"), cell(d.error, "l"), el("td", { class: "l" }, payload)));
  }
  if (rows.length === 1) rows.push(el("tr", {}, el("td", { class: "l dim", colspan: 7 }, "none yet")));
  const more = snap.dead_letters.length - shown.length;
  if (more > 0) rows.push(el("tr", {}, el("td", { class: "l dim", colspan: 7 }, more + " older in the snapshot JSON")));
  document.getElementById("dead-letters").replaceChildren(...rows);
}

function flatten(value, prefix, out) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? prefix + "." + k : k, out);
  } else {
    out.push([prefix, Array.isArray(value) ? JSON.stringify(value) : value]);
  }
  return out;
}

function renderSections(snap) {
  const boxes = [];
  for (const [name, value] of Object.entries(snap.sections || {})) {
    const rows = flatten(value, "", []).map(([k, v]) => el("tr", {}, cell(k, "l"), cell(v === null ? "–" : v)));
    boxes.push(el("section", { "data-section": name }, el("h2", {}, name), el("table", {}, ...rows)));
  }
  document.getElementById("sections").replaceChildren(...boxes);
}

const DEAD_LETTERS_SHOWN = 12;
let updates = 0;
function render(snap) {
  renderHealth(snap); renderTopics(snap); renderPools(snap); renderGraph(snap); renderDeadLetters(snap); renderSections(snap);
  updates += 1;
  document.body.dataset.updates = String(updates);
  const status = document.getElementById("status");
  status.className = "status live";
  status.textContent = "live · " + new Date(snap.at_ms).toLocaleTimeString() + " · every " + snap.interval_ms + " ms";
}

const source = new EventSource(withToken("api/events"));
source.onmessage = (e) => {
  try { render(JSON.parse(e.data)); } catch (err) {
    console.error("tidings view:", err);
    const status = document.getElementById("status");
    status.className = "status lost";
    status.textContent = "could not show a snapshot: " + err;
  }
};
source.onerror = () => {
  const status = document.getElementById("status");
  status.className = "status lost";
  status.textContent = "disconnected: retrying…";
};
