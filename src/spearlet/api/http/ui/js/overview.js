// Overview: the node's health and figures, cluster peers, and the last minutes as charts.

import { request } from "./api.js";
import { lineChart } from "./chart.js";
import { badge, bytes, count, duration, errorText, every, h, uptime } from "./dom.js";

const WINDOWS = [[300, "5 minutes"], [900, "15 minutes"], [3600, "1 hour"]];
const REFRESH_MS = 3000;

function card(label, value, sub, id) {
  return h("div", { class: "card", id },
    h("div", { class: "label" }, label),
    h("div", { class: "value" }, value),
    sub ? h("div", { class: "sub" }, sub) : null);
}

export function mount(main) {
  const stored = Number(sessionStorage.getItem("spearlet.window")) || 900;
  let windowS = WINDOWS.some(([v]) => v === stored) ? stored : 900;
  const select = h("select", { id: "window", onchange: () => {
    windowS = Number(select.value);
    sessionStorage.setItem("spearlet.window", String(windowS));
    refresh();
  } }, WINDOWS.map(([v, text]) => h("option", { value: String(v), selected: v === windowS }, text)));
  const cards = h("div", { class: "grid cards", "aria-live": "off" });
  const cluster = h("section", { class: "panel", "aria-labelledby": "cluster-title" });
  const charts = h("div", { class: "grid charts" });
  const problem = h("p", { class: "error", role: "alert" });
  main.append(
    h("h1", { tabindex: -1 }, "Overview"),
    problem,
    cards,
    h("div", { class: "filters" }, h("div", {}, h("label", { for: "window" }, "Charts over the last"), select)),
    h("section", { class: "panel", "aria-label": "Charts" }, charts),
    cluster,
  );
  let stats = null;
  let statsAt = 0;

  const refresh = async () => {
    try {
      const now = Date.now();
      const statsDue = now - statsAt > 10_000;
      const [health, series, peers, fresh] = await Promise.all([
        request("/api/v1/health?include_details=true"),
        request(`/api/v1/timeseries?window_s=${windowS}`),
        request("/api/v1/cluster"),
        // Counted over every retained record: a heavier query, asked less often.
        statsDue ? request("/api/v1/stats?include_task_stats=false") : Promise.resolve(null),
      ]);
      if (fresh) {
        stats = fresh.execution_stats;
        statsAt = now;
      }
      problem.textContent = "";
      showCards(cards, health, stats);
      showCharts(charts, series);
      showCluster(cluster, peers);
    } catch (error) {
      problem.textContent = `Could not refresh: ${errorText(error)}`;
    }
  };
  return every(REFRESH_MS, refresh);
}

function showCards(cards, health, stats) {
  const d = health.details || {};
  const info = d.system_info || {};
  cards.replaceChildren(
    card("Health", badge(health.status), health.message, "health"),
    // The sandbox's first words ("bubblewrap", "off"); the whole sentence on hover.
    card("Node", info.node || "—", h("span", { title: info.sandbox || "" },
      `up ${uptime(health.uptime_seconds)} · sandbox ${(info.sandbox || "—").split(" (")[0]} · ${count(d.active_tasks)} tasks · ` +
      `${bytes(d.total_memory_used)} with its functions`), "node"),
    card("Running", count(d.running_executions), "executions on this node now", "running"),
    card("Queue", count(d.pending_executions), "accepted, waiting for a slot", "queue"),
    card("Completed", stats ? count(stats.completed_executions) : "…", `of ${count(d.total_executions)} records kept`, "completed"),
    card("Failed", stats ? count(stats.failed_executions) : "…", stats
      ? `timeouts included · success ${Number(stats.success_rate_percent).toFixed(1)}%` : "", "failed"),
  );
}

function showCharts(charts, series) {
  // The last step is the current one, still filling: its rate reads low until it ends.
  const points = series.points;
  const times = points.map((p) => p.t_ms);
  const perMinute = 60 / series.step_s;
  charts.replaceChildren(
    lineChart({
      title: "Completion rate", unit: "/min", times,
      series: [
        { name: "completed", cls: "ok", values: points.map((p) => p.completed * perMinute) },
        { name: "failed", cls: "bad", values: points.map((p) => p.failed * perMinute) },
      ],
    }),
    lineChart({
      title: "Execution time", unit: "", times, format: duration,
      series: [
        { name: "p50", cls: "s0", values: points.map((p) => p.p50_ms) },
        { name: "p95", cls: "s1", values: points.map((p) => p.p95_ms) },
      ],
    }),
    lineChart({
      title: "Queue length", unit: "", times,
      series: [{ name: "longest", cls: "s0", values: points.map((p) => p.queue_length) }],
    }),
    lineChart({
      title: "Accepted", unit: "/min", times,
      series: [{ name: "accepted", cls: "s1", values: points.map((p) => p.accepted * perMinute) }],
    }),
  );
}

function showCluster(section, cluster) {
  const title = h("h2", { id: "cluster-title" }, cluster.mode === "cluster" ? "Cluster" : "Single node");
  if (cluster.mode !== "cluster") {
    section.replaceChildren(title, h("p", { class: "muted" },
      `Node ${cluster.node_id} runs alone (its own store). With a Redis store, its peers are listed here.`));
    return;
  }
  section.replaceChildren(title, h("ul", { class: "peers", id: "peers" }, cluster.peers.map((peer) =>
    h("li", { "data-node": peer.node_id },
      h("span", { class: `badge ${peer.alive ? "alive" : "lost"}` }, peer.alive ? "alive" : "no heartbeat"),
      h("span", { class: "mono" }, peer.node_id),
      peer.self ? h("span", { class: "muted" }, "(this node)") : null,
      h("span", { class: "muted" }, `${count(peer.running_here)} sync or stream calls running`)))));
}
