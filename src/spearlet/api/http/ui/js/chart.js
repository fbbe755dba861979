// A small line chart in SVG: a few series over the same time steps, a y axis from zero with three
// grid lines, the first and last times on the x axis. A null value leaves a gap in its line.

import { clockTime, h, s } from "./dom.js";

const W = 600;
const H = 180;
const PAD = { left: 48, right: 12, top: 10, bottom: 24 };

function niceMax(value) {
  if (value <= 0) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= value) return m * exp;
  return 10 * exp;
}

function label(value) {
  if (value >= 1_000_000) return `${+(value / 1_000_000).toFixed(1)}M`;
  if (value >= 1000) return `${+(value / 1000).toFixed(1)}k`;
  return String(+value.toFixed(2));
}

/**
 * figure: {title, unit, times: [ms], series: [{name, cls, values: [number|null]}], format(v)}
 * Returns a <figure> whose caption carries the latest value of each series, its aria-label the
 * latest and the peak.
 */
export function lineChart({ title, unit, times, series, format = label }) {
  const max = niceMax(Math.max(0, ...series.flatMap((x) => x.values.filter((v) => v !== null))));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (times.length > 1 ? (i * plotW) / (times.length - 1) : plotW);
  const y = (v) => PAD.top + plotH - (v / max) * plotH;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", focusable: "false" });
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    svg.append(
      s("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y(value), y2: y(value) }),
      text(PAD.left - 6, y(value) + 4, label(value), "end"),
    );
  }
  if (times.length) {
    svg.append(text(PAD.left, H - 6, clockTime(times[0]), "start"), text(W - PAD.right, H - 6, "now", "end"));
  }
  for (const line of series) {
    let d = "";
    let pen = false;
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    // A lone point draws nothing as a path: mark it with a dot.
    if (d && !d.includes("L")) {
      const [cx, cy] = d.slice(1).split(",");
      svg.append(s("circle", { class: `line ${line.cls}`, cx, cy, r: 2.5 }));
    }
    svg.append(s("path", { class: `line ${line.cls}`, d }));
  }
  const shown = (v) => (v === undefined ? "—" : `${format(v)}${unit ? ` ${unit}` : ""}`);
  const latest = series.map((line) => {
    const values = line.values.filter((v) => v !== null && v !== undefined);
    return { line, text: shown(values.at(-1)), peak: shown(values.length ? Math.max(...values) : undefined) };
  });
  const summary = `${title}: ${latest.map((l) => `${l.line.name} ${l.text} (peak ${l.peak})`).join(", ")}`;
  svg.setAttribute("aria-label", summary);
  const legend = h("span", { class: "legend" },
    latest.map((l) => h("span", { class: l.line.cls }, `${l.line.name} `, h("b", {}, l.text))));
  return h("figure", { class: "chart" }, h("figcaption", {}, h("span", {}, title), legend), svg);
}

function text(xPos, yPos, content, anchor) {
  const el = s("text", { x: xPos, y: yPos, "text-anchor": anchor });
  el.textContent = content;
  return el;
}
