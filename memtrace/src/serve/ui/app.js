// memtrace's live page: polls history.json and attributed.json (beside
// this page) and draws inline SVG. Everything from the server is put in
// the page as text (textContent), never as markup: call-site names hold
// <, >, & and quotes.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const TOP_SITES = 25;
const GROWTH_LINES = 6;
// Without a history endpoint the page keeps this many polled reports.
const LOCAL_SAMPLES = 720;
const COLORS = {
  named_regions: "#6366f1", allocator_arenas: "#f59e0b", thread_stacks: "#10b981",
  runtime_heaps: "#3b82f6", jit_code: "#ef4444", other_call_sites: "#8b5cf6",
  untraced: "#9ca3af",
};
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];

const state = { report: null, history: null, local: [], serverHistory: null, pollMs: 5000 };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function human(n) {
  if (n === null || n === undefined || !isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = Math.abs(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  const s = i === 0 ? String(Math.round(v)) : v.toFixed(1);
  return (n < 0 ? "-" : "") + s + " " + units[i];
}

function clock(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function short(path) {
  const s = String(path || "");
  return s.slice(s.lastIndexOf("/") + 1);
}

// A frame as the text report shows it: `function (file:line)`.
function frameText(f) {
  if (!f) return "?";
  if (f.function) {
    return f.file && f.line ? `${f.function} (${short(f.file)}:${f.line})` : f.function;
  }
  if (f.module) return `${short(f.module)}+0x${Number(f.module_offset || 0).toString(16)}`;
  return String(f.address);
}

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) {
    const body = await r.text();
    const err = new Error(`${url}: ${r.status} ${body.trim()}`);
    err.status = r.status;
    throw err;
  }
  return r.json();
}

// The history the page keeps itself when the server has none: one sample
// per polled report, in the shape of history.json.
function localHistory(report) {
  const now = Date.now();
  const categories = {};
  // Resident bytes, private + shared, as history.json counts them.
  const resident = (x) => x.rss_bytes + (x.shared_rss_bytes || 0);
  for (const c of report.categories || []) categories[c.name] = resident(c);
  const sites = {};
  for (const s of report.call_sites || []) {
    const key = s.label + " | " + (s.subcategory || "");
    sites[key] = { label: s.label, category: s.category, rss: (sites[key] ? sites[key].rss : 0) + resident(s) };
  }
  state.local.push({
    sample: {
      unix_ms: now, rss_bytes: report.anon_rss_bytes, anon_rss_bytes: report.anon_rss_bytes,
      attributed_rss_bytes: report.attributed_rss_bytes, coverage: report.coverage,
      lost_events: report.lost_events, categories,
    },
    sites,
  });
  if (state.local.length > LOCAL_SAMPLES) state.local.shift();
  const samples = state.local.map((x) => x.sample);
  const keys = new Map();
  state.local.forEach((x) => { for (const [k, v] of Object.entries(x.sites)) keys.set(k, v); });
  const series = [...keys].map(([key, v]) => ({
    key, label: v.label, category: v.category,
    rss_bytes: state.local.map((x) => (x.sites[key] ? x.sites[key].rss : null)),
  }));
  const growing = series.map((s) => {
    const vals = s.rss_bytes.map((v) => v || 0);
    const start = vals[0], nowB = vals[vals.length - 1];
    const minutes = Math.max((samples[samples.length - 1].unix_ms - samples[0].unix_ms) / 60000, 1e-9);
    return { key: s.key, label: s.label, start_bytes: start, now_bytes: nowB, growth_bytes: nowB - start,
             bytes_per_minute: (nowB - start) / minutes, since_unix_ms: samples[0].unix_ms };
  }).filter((g) => g.growth_bytes > 0).sort((a, b) => b.growth_bytes - a.growth_bytes);
  series.sort((a, b) => (b.rss_bytes[b.rss_bytes.length - 1] || 0) - (a.rss_bytes[a.rss_bytes.length - 1] || 0));
  return { local: true, samples, sites: series, growing, alerts: [] };
}

async function poll() {
  let error = null;
  try {
    state.report = await getJson("attributed.json?top=" + TOP_SITES * 4);
  } catch (e) { error = e; }
  if (state.serverHistory !== false) {
    try {
      state.history = await getJson("history.json");
      state.serverHistory = true;
      const every = Number(state.history.sample_every_ms);
      if (every > 0) state.pollMs = Math.min(Math.max(every, 1000), 10000);
    } catch (e) {
      // No history endpoint on this server: keep one here.
      if (e.status === 404 && !state.serverHistory) state.serverHistory = false;
      else error = error || e;
    }
  }
  if (state.serverHistory === false && state.report && !error) state.history = localHistory(state.report);
  render(error);
  setTimeout(poll, state.pollMs);
}

function render(error) {
  const st = $("status");
  st.className = error ? "status error" : "status";
  const source = state.serverHistory ? "history from the server"
    : "history kept by this page since it opened (the server has no history.json)";
  st.textContent = error ? `error: ${error.message}` : `updated ${clock(Date.now())}; ${source}; refresh every ${state.pollMs / 1000} s`;
  if (state.report) renderTotals(state.report);
  if (state.history) {
    renderCategories(state.history, state.report);
    renderGrowth(state.history);
    renderAlerts(state.history.alerts || [], state.history.local);
  }
  if (state.report) renderSites(state.report);
}

function renderTotals(r) {
  $("pid").textContent = `pid ${r.pid}`;
  const t = $("totals");
  t.replaceChildren(
    el("span", {}, `anonymous RSS ${human(r.anon_rss_bytes)}`),
    el("span", {}, `attributed ${(100 * r.coverage).toFixed(1)}%`),
    el("span", {}, `untraced ${human(r.untraced_rss_bytes)}`),
    el("span", {}, `call sites ${r.call_site_count}`),
    el("span", {}, `lost events ${r.lost_events}`),
  );
}

// A chart frame: the SVG, its plot area and scales.
function frame(container, ymax, t0, t1) {
  const W = 1000, H = 260, L = 70, R = 12, T = 10, B = 24;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  const x = (t) => L + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - L - R) : (W - L - R));
  const y = (v) => T + (1 - v / (ymax || 1)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, human(v)));
  }
  root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  root.append(svg("text", { x: L, y: H - 6 }, clock(t0)));
  root.append(svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, clock(t1)));
  container.replaceChildren(root);
  return { root, x, y, left: L, right: W - R };
}

function emptyChart(container, message) {
  const root = svg("svg", { viewBox: "0 0 1000 60" });
  root.append(svg("text", { class: "empty", x: 10, y: 34 }, message));
  container.replaceChildren(root);
}

function legend(container, items) {
  container.replaceChildren(...items.map(([color, text]) => {
    const item = el("span", { class: "legend-item" });
    item.append(el("span", { class: "swatch", style: `background:${color}` }), document.createTextNode(text));
    return item;
  }));
}

function renderCategories(h, report) {
  const samples = h.samples || [];
  if (samples.length === 0) { emptyChart($("category-chart"), "no samples yet"); return; }
  // Stack in the report's category order; labels from the report.
  const labels = {};
  const order = [];
  for (const c of (report && report.categories) || []) { labels[c.name] = c.label; order.push(c.name); }
  for (const s of samples) for (const k of Object.keys(s.categories || {})) if (!order.includes(k)) order.push(k);
  const tot = samples.map((s) => order.reduce((a, k) => a + ((s.categories || {})[k] || 0), 0));
  const ymax = Math.max(...tot, 1);
  const t0 = samples[0].unix_ms, t1 = samples[samples.length - 1].unix_ms;
  const f = frame($("category-chart"), ymax, t0, t1);
  const base = samples.map(() => 0);
  const items = [];
  for (const k of order) {
    const vals = samples.map((s) => (s.categories || {})[k] || 0);
    if (vals.every((v) => v === 0)) continue;
    const top = base.map((b, i) => b + vals[i]);
    const color = COLORS[k] || PALETTE[items.length % PALETTE.length];
    let d;
    if (samples.length === 1) {
      // One sample: a band across the chart.
      d = `M${f.left},${f.y(top[0])} H${f.right} V${f.y(base[0])} H${f.left} Z`;
    } else {
      d = "M" + samples.map((s, i) => `${f.x(s.unix_ms)},${f.y(top[i])}`).join(" L") +
        " L" + samples.map((s, i) => `${f.x(s.unix_ms)},${f.y(base[i])}`).reverse().join(" L") + " Z";
    }
    const area = svg("path", { class: "area", "data-category": k, d, fill: color, "fill-opacity": 0.75, stroke: color });
    area.append(svg("title", {}, `${labels[k] || k}: ${human(vals[vals.length - 1])}`));
    f.root.append(area);
    items.push([color, `${labels[k] || k} ${human(vals[vals.length - 1])}`]);
    for (let i = 0; i < base.length; i++) base[i] = top[i];
  }
  legend($("category-legend"), items);
}

function renderGrowth(h) {
  const samples = h.samples || [];
  const sites = h.sites || [];
  const byKey = new Map(sites.map((s) => [s.key, s]));
  let picked = (h.growing || []).filter((g) => byKey.has(g.key)).slice(0, GROWTH_LINES);
  let title = "Growing call sites";
  if (picked.length === 0) {
    // Nothing grows: show the largest sites, so the chart still says
    // where the memory is over time.
    picked = sites.filter((s) => s.key !== "other").slice(0, GROWTH_LINES).map((s) => ({ key: s.key, label: s.label }));
    title = "Largest call sites (nothing is growing)";
  }
  $("growth-title").textContent = title;
  if (samples.length === 0 || picked.length === 0) {
    emptyChart($("growth-chart"), "no call sites yet");
    legend($("growth-legend"), []);
    return;
  }
  const series = picked.map((g) => ({ g, vals: byKey.get(g.key).rss_bytes || [] }));
  const ymax = Math.max(1, ...series.flatMap((s) => s.vals.filter((v) => v !== null)));
  const t0 = samples[0].unix_ms, t1 = samples[samples.length - 1].unix_ms;
  const f = frame($("growth-chart"), ymax, t0, t1);
  const items = [];
  series.forEach(({ g, vals }, n) => {
    const color = PALETTE[n % PALETTE.length];
    // A null (site not present in that sample) breaks the line.
    let d = "", pen = "M";
    vals.forEach((v, i) => {
      if (v === null || v === undefined || i >= samples.length) { pen = "M"; return; }
      d += `${pen}${f.x(samples[i].unix_ms)},${f.y(v)} `;
      pen = "L";
    });
    if (samples.length === 1 && vals[0] !== null) d = `M${f.left},${f.y(vals[0])} H${f.right}`;
    const line = svg("path", { class: "line", "data-key": g.key, d, stroke: color });
    const rate = g.bytes_per_minute !== undefined ? `, ${human(g.bytes_per_minute)}/min` : "";
    const label = g.label || byKey.get(g.key).label || g.key;
    line.append(svg("title", {}, `${label}${rate}`));
    f.root.append(line);
    const growth = g.growth_bytes !== undefined ? ` +${human(g.growth_bytes)}${rate}` : "";
    items.push([color, `${label}${growth}`]);
  });
  legend($("growth-legend"), items);
}

function renderAlerts(alerts, local) {
  const ul = $("alerts");
  if (alerts.length === 0) {
    const why = local ? "alerts come with the server's history.json, which this server lacks"
      : "no alert rules (memtrace serve --alert …)";
    ul.replaceChildren(el("li", { class: "ok" }, why));
    return;
  }
  ul.replaceChildren(...alerts.map((a) => {
    const since = a.firing && a.since_unix_ms ? ` since ${clock(a.since_unix_ms)}` : "";
    return el("li", { class: a.firing ? "firing" : "ok" },
      `${a.firing ? "FIRING" : "ok"} ${a.rule}${since}: ${a.message || ""}`);
  }));
}

function renderSites(r) {
  const body = $("sites").tBodies[0];
  body.replaceChildren(...(r.call_sites || []).slice(0, TOP_SITES).map((s) => {
    const tr = el("tr", { class: "site-row" });
    tr.append(
      el("td", { class: "num" }, human(s.rss_bytes + (s.shared_rss_bytes || 0))),
      el("td", { class: "num" }, human(s.virtual_bytes)),
      el("td", { class: "num" }, String(s.mappings)),
      // The labels the text report shows, sent beside the ids.
      el("td", { title: s.subcategory }, s.subcategory_label),
      el("td", { class: "site", title: (s.stack || []).map(frameText).join("\n") }, s.label),
      el("td", {}, (s.names || []).join(", ")),
    );
    return tr;
  }));
}

// Fit the frame to the flame graph's height (same origin: readable).
$("flamegraph").addEventListener("load", () => {
  const root = $("flamegraph").contentDocument && $("flamegraph").contentDocument.documentElement;
  const h = root && Number(root.getAttribute("height"));
  if (h > 0) $("flamegraph").style.height = `${Math.min(h + 8, 2000)}px`;
});
$("flame-refresh").addEventListener("click", () => {
  $("flamegraph").contentWindow.location.reload();
});
poll();
