// Line charts as inline SVG: axes with rounded ticks, one polyline per series, an HTML legend, and a
// text summary for screen readers. Colours and dashes come from classes in app.css.

import { h } from "./api.js";

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  return (norm >= 5 ? 10 : norm >= 2 ? 5 : norm >= 1 ? 2 : 1) * mag;
}

function ticks(lo, hi, count) {
  if (!(hi > lo)) { hi = lo + 1; }
  const step = niceStep(hi - lo, count);
  const start = Math.floor(lo / step) * step, end = Math.ceil(hi / step) * step;
  const out = [];
  for (let v = start; v <= end + step / 2; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 100000)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

// series: [{name, points: [[x, y], …], cls: "s0".."s3", dashed}]
export function lineChart({ title, series, xLabel = "step", yLabel = "", empty = "No points yet." }) {
  const W = 640, H = 260, L = 56, R = 14, T = 14, B = 40;
  const pts = series.flatMap((s) => s.points);
  const fig = h("figure", { class: "chart" }, h("figcaption", {}, title));
  const n = series.reduce((a, s) => a + s.points.length, 0);
  fig.dataset.points = String(n);
  if (!pts.length) {
    fig.append(h("p", { class: "muted chart-empty" }, empty));
    return fig;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  // x runs from 0 (or below) to the last step, so a curve that is still growing reaches the right edge.
  const x0 = Math.min(0, ...xs), x1 = Math.max(x0 + 1, ...xs);
  const xt = ticks(x0, x1, 6).filter((v) => v >= x0 && v <= x1);
  const yt = ticks(Math.min(...ys), Math.max(...ys), 5);
  const y0 = yt[0], y1 = yt[yt.length - 1];
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const summary = series.filter((s) => s.points.length).map((s) => {
    const last = s.points[s.points.length - 1];
    return `${s.name}: ${s.points.length} points, last ${label(last[1])} at ${xLabel} ${last[0]}`;
  }).join("; ");
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}. ${summary}`, class: "chart-svg" });
  root.append(svg("title", {}, `${title}. ${summary}`));
  const grid = svg("g", { class: "grid" });
  for (const v of yt) {
    grid.append(svg("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v) }));
    root.append(svg("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end", class: "tick" }, label(v)));
  }
  for (const v of xt) {
    grid.append(svg("line", { x1: sx(v), x2: sx(v), y1: T, y2: H - B }));
    root.append(svg("text", { x: sx(v), y: H - B + 16, "text-anchor": "middle", class: "tick" }, label(v)));
  }
  root.prepend(grid);
  root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  root.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  root.append(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis-label" }, xLabel));
  if (yLabel) root.append(svg("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-label",
    transform: `rotate(-90 12 ${(T + H - B) / 2})` }, yLabel));
  for (const s of series) {
    if (!s.points.length) continue;
    const cls = `line ${s.cls || "s0"}${s.dashed ? " dashed" : ""}`;
    const coords = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    const line = svg("polyline", { points: coords, class: cls, "data-series": s.name });
    root.append(line);
    if (s.points.length < 30) {
      for (const p of s.points) root.append(svg("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.5, class: `dot ${s.cls || "s0"}` }));
    }
  }
  fig.append(root);
  fig.append(h("ul", { class: "legend" }, series.filter((s) => s.points.length).map((s) =>
    h("li", {}, h("span", { class: `swatch ${s.cls || "s0"}${s.dashed ? " dashed" : ""}`, "aria-hidden": "true" }), s.name))));
  return fig;
}

// The train/validation series of one metric from a job's metrics events.
export function metricSeries(events, trainKey, validKey, prefix = "", cls = ["s0", "s1"]) {
  const metrics = events.filter((e) => e.type === "metrics" && e.data && typeof e.data.step === "number");
  const pick = (key) => {
    const byStep = new Map();
    for (const e of metrics) if (typeof e.data[key] === "number") byStep.set(e.data.step, e.data[key]);
    return [...byStep.entries()].sort((a, b) => a[0] - b[0]);
  };
  return [
    { name: `${prefix}train`, points: pick(trainKey), cls: cls[0] },
    { name: `${prefix}validation`, points: pick(validKey), cls: cls[1], dashed: true },
  ];
}
