// The sift dashboard: reads /v1/ai/stats/hourly and /v1/ai/stats/dedup with the tenant's key
// and draws them as tables and SVG charts. No library, nothing loaded from outside sift.
"use strict";

const COLORS = ["#3559e0", "#e0663a", "#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#db2777"];
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en-US");
const pct = (x) => (100 * x).toFixed(1) + " %";

function keyFromHash() {
  const match = /(?:^#|&)key=([^&]+)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

async function getJson(path, key) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + key } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

async function load(event) {
  if (event) event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem("sift-key", key);
  const hours = Number($("range").value);
  const to = Math.ceil(Date.now() / 3600e3) * 3600;
  const from = to - hours * 3600;
  const model = $("model").value.trim();
  // v1.2.3 is an application version; anything else a provider's model name.
  const filter = /^v\d+\.\d+\.\d+$/.test(model) ? "model_version" : "model";
  const query = `from=${from}&to=${to}` + (model ? `&${filter}=${encodeURIComponent(model)}` : "");
  document.body.dataset.state = "loading";
  $("status").className = "";
  $("status").textContent = "Loading…";
  try {
    const [hourly, dedup] = await Promise.all([
      getJson("/v1/ai/stats/hourly?" + query, key),
      getJson(`/v1/ai/stats/dedup?from=${from}&to=${to}`, key),
    ]);
    render(hourly, dedup);
    $("status").textContent = `Tenant ${hourly.tenant}, ${hourly.from} to ${hourly.to}.`;
    document.body.dataset.state = "ready";
  } catch (error) {
    $("status").className = "error";
    $("status").textContent = "Cannot load: " + error.message;
    document.body.dataset.state = "error";
  }
}

// A row's model as people name it: the provider's name, the application's version, or both.
function modelOf(row) {
  return [row.model, row.model_version].filter(Boolean).join(" ");
}

function byModel(rows) {
  const models = new Map();
  for (const row of rows) {
    const model = modelOf(row);
    if (!models.has(model)) models.set(model, []);
    models.get(model).push(row);
  }
  return models;
}

function render(hourly, dedup) {
  const rows = hourly.rows;
  const models = byModel(rows);
  const sum = (list, field) => list.reduce((acc, r) => acc + r[field], 0);
  const events = sum(rows, "events");
  $("summary").hidden = false;
  $("total-events").textContent = fmt.format(events);
  $("total-success").textContent = events ? pct(sum(rows, "successes") / events) : "–";
  $("total-tokens").textContent = fmt.format(sum(rows, "total_tokens"));
  $("dedup-ratio").textContent = dedup.accepted ? dedup.dedup_ratio.toFixed(2) + "×" : "–";
  $("dedup-detail").textContent = `${fmt.format(dedup.received)} received, ${fmt.format(dedup.accepted)} kept`;

  const body = $("models").querySelector("tbody");
  body.replaceChildren();
  for (const [model, list] of models) {
    const n = sum(list, "events");
    const busiest = list.reduce((a, b) => (b.events > a.events ? b : a));
    const cells = [model, fmt.format(n), pct(sum(list, "successes") / n), fmt.format(sum(list, "total_tokens")),
      pct(sum(list, "fallbacks") / n), busiest.p50_latency_ms.toFixed(1), busiest.p95_latency_ms.toFixed(1),
      busiest.p99_latency_ms.toFixed(1)];
    const tr = document.createElement("tr");
    tr.dataset.model = model;
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }

  const hours = [...new Set(rows.map((r) => r.hour))].sort();
  const charts = $("charts");
  charts.replaceChildren();
  const series = (field) => [...models].map(([model, list], i) => ({
    name: model, color: COLORS[i % COLORS.length],
    points: list.map((r) => [hours.indexOf(r.hour), field(r)]),
  }));
  charts.appendChild(chart("Events per hour", hours, series((r) => r.events), fmt.format));
  charts.appendChild(chart("Success rate", hours, series((r) => r.success_rate), pct));
  charts.appendChild(chart("Tokens per hour", hours, series((r) => r.total_tokens), fmt.format));
  const latency = [];
  [...models].forEach(([model, list], i) => {
    for (const [q, dash] of [["p50", ""], ["p95", "4 3"], ["p99", "1 3"]]) {
      latency.push({ name: `${model} ${q}`, color: COLORS[i % COLORS.length], dash,
        points: list.map((r) => [hours.indexOf(r.hour), r[`${q}_latency_ms`]]) });
    }
  });
  charts.appendChild(chart("Latency p50 / p95 / p99 (ms)", hours, latency, (v) => v.toFixed(0)));
}

function chart(title, hours, series, label) {
  const W = 560, H = 180, L = 56, B = 22, T = 8;
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs) => {
    const node = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };
  const max = Math.max(1e-9, ...series.flatMap((s) => s.points.map((p) => p[1])));
  const x = (i) => L + (hours.length <= 1 ? (W - L) / 2 : (i * (W - L - 8)) / (hours.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (const f of [0, 0.5, 1]) {
    svg.appendChild(el("line", { x1: L, x2: W, y1: y(max * f), y2: y(max * f), stroke: "#e4e7ec" }));
    const t = el("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end", "font-size": 10, fill: "#667085" });
    t.textContent = label(max * f);
    svg.appendChild(t);
  }
  const step = Math.max(1, Math.ceil(hours.length / 6));
  hours.forEach((h, i) => {
    if (i % step) return;
    const t = el("text", { x: x(i), y: H - 6, "text-anchor": "middle", "font-size": 10, fill: "#667085" });
    t.textContent = h.slice(5, 13).replace("T", " ") + "h";
    svg.appendChild(t);
  });
  for (const s of series) {
    const points = s.points.sort((a, b) => a[0] - b[0]);
    svg.appendChild(el("polyline", { points: points.map(([i, v]) => `${x(i)},${y(v)}`).join(" "), fill: "none",
      stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash || "" }));
    // Each point names its series, hour and value (for people: a tooltip; for tests: data-*).
    for (const [i, v] of points) {
      const dot = el("circle", { cx: x(i), cy: y(v), r: 2.5, fill: s.color,
        "data-series": s.name, "data-hour": hours[i], "data-value": v });
      const tip = el("title", {});
      tip.textContent = `${s.name}, ${hours[i].slice(0, 13).replace("T", " ")}h: ${label(v)}`;
      dot.appendChild(tip);
      svg.appendChild(dot);
    }
  }
  const box = document.createElement("div");
  box.className = "chart";
  const h3 = document.createElement("h3");
  h3.textContent = title;
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const s of series) {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = s.color;
    span.append(swatch, s.name);
    legend.appendChild(span);
  }
  box.append(h3, svg, legend);
  return box;
}

$("controls").addEventListener("submit", load);
const initial = keyFromHash() || sessionStorage.getItem("sift-key");
if (initial) {
  $("key").value = initial;
  load();
}
