// Executions: filters (task, status, time) in the URL, pages read from the node (newest first,
// a cursor per page), and live changes from the event stream.
//
// The node filters and pages: the page holds one page of rows whatever the number of executions.
// On the first page a new execution that matches the filters appears at the top at once; on a later
// page, a notice counts them instead of moving the rows under the reader's eyes.

import { request } from "./api.js";
import { count, errorText, h } from "./dom.js";
import { subscribe } from "./live.js";
import { ExecutionTable } from "./rows.js";

const STATUSES = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"];
const SINCE = [["", "Any time"], ["300", "Last 5 minutes"], ["900", "Last 15 minutes"], ["3600", "Last hour"], ["86400", "Last 24 hours"]];
const SIZES = ["25", "50", "100", "200"];
const RELOAD_GAP_MS = 2000; // at most one reload this often when the stream says the page fell behind
const APPLY_GAP_MS = 400;

function option(value, text, selected) {
  return h("option", { value, selected: value === selected }, text);
}

export function mount(main, _params, query) {
  const filters = {
    task: query.get("task") || "",
    status: (query.get("status") || "").toUpperCase(),
    since: query.get("since") || "",
    size: SIZES.includes(query.get("size")) ? query.get("size") : "50",
  };
  const cursors = [""]; // start_after of each page visited; the last is the current page
  let sinceMs = 0;
  const newer = new Set(); // executions that appeared while not on the first page
  let stopped = false;

  const table = new ExecutionTable("Executions, newest first");
  const status = h("p", { class: "muted", role: "status", id: "page-status" });
  const problem = h("p", { class: "error", role: "alert" });
  const notice = h("div", { class: "notice", hidden: true, role: "status" });
  const older = h("button", { type: "button", id: "older", onclick: () => go(1) }, "Older");
  const newerButton = h("button", { type: "button", id: "newer", onclick: () => go(-1) }, "Newer");

  const taskSelect = h("select", { id: "filter-task", name: "task" }, option("", "All tasks", filters.task));
  if (filters.task) taskSelect.append(option(filters.task, filters.task, filters.task));
  const statusSelect = h("select", { id: "filter-status", name: "status" },
    option("", "Any status", filters.status), STATUSES.map((s) => option(s, s.toLowerCase(), filters.status)));
  const sinceSelect = h("select", { id: "filter-since", name: "since" }, SINCE.map(([v, t]) => option(v, t, filters.since)));
  const sizeSelect = h("select", { id: "filter-size", name: "size" }, SIZES.map((v) => option(v, v, filters.size)));
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter executions", onsubmit: (e) => e.preventDefault() },
    h("div", {}, h("label", { for: "filter-task" }, "Task"), taskSelect),
    h("div", {}, h("label", { for: "filter-status" }, "Status"), statusSelect),
    h("div", {}, h("label", { for: "filter-since" }, "Created"), sinceSelect),
    h("div", {}, h("label", { for: "filter-size" }, "Per page"), sizeSelect));
  form.addEventListener("change", () => {
    const next = new URLSearchParams();
    for (const [key, el] of [["task", taskSelect], ["status", statusSelect], ["since", sinceSelect], ["size", sizeSelect]]) {
      if (el.value && !(key === "size" && el.value === "50")) next.set(key, el.value);
    }
    const hash = `#/executions${next.toString() ? `?${next}` : ""}`;
    history.replaceState(null, "", hash);
    Object.assign(filters, { task: taskSelect.value, status: statusSelect.value, since: sinceSelect.value, size: sizeSelect.value });
    cursors.splice(0, cursors.length, "");
    load();
  });

  main.append(
    h("h1", { tabindex: -1 }, "Executions"),
    form, problem, notice, table.element,
    h("div", { class: "pager" }, newerButton, older, status));

  request("/api/v1/tasks?limit=1000").then((answer) => {
    for (const t of answer.tasks) {
      if (t.task_id !== filters.task) taskSelect.append(option(t.task_id, t.task_id, filters.task));
    }
  }).catch(() => {});

  let hasMore = false;
  let loading = null;
  const load = async () => {
    const page = cursors.length;
    sinceMs = filters.since ? Date.now() - Number(filters.since) * 1000 : 0;
    const params = new URLSearchParams({ view: "record", limit: filters.size });
    if (filters.task) params.set("task_id", filters.task);
    if (filters.status) params.set("status", filters.status);
    if (sinceMs) params.set("since_ms", String(sinceMs));
    if (cursors.at(-1)) params.set("start_after", cursors.at(-1));
    const mine = (loading = request(`/api/v1/executions?${params}`));
    try {
      const answer = await mine;
      if (stopped || mine !== loading) return; // a newer load was asked for meanwhile
      problem.textContent = "";
      table.replace(answer.executions);
      hasMore = answer.has_more;
      if (page === 1) {
        newer.clear();
        notice.hidden = true;
      }
      paint();
    } catch (error) {
      if (mine === loading) problem.textContent = errorText(error);
    }
  };

  const paint = () => {
    older.disabled = !hasMore;
    newerButton.disabled = cursors.length === 1;
    status.textContent = `Page ${cursors.length} · ${count(table.rows.size)} shown${hasMore ? "" : " · the last page"}`;
  };

  const go = (step) => {
    if (step > 0 && hasMore) cursors.push(table.lastId());
    else if (step < 0 && cursors.length > 1) cursors.pop();
    else return;
    load();
  };

  const matches = (view) =>
    (!filters.task || view.task_id === filters.task) &&
    (!filters.status || view.status === filters.status) &&
    (!sinceMs || view.created_at_ms >= sinceMs);

  // Changes are applied at most every APPLY_GAP_MS: under a flood, a few repaints a second
  // rather than one per message (the latest state of each execution is all that is shown).
  const waiting = new Map();
  let applyTimer = null;
  let lastApply = 0;
  const later = (views) => {
    for (const view of views) {
      waiting.delete(view.execution_id);
      waiting.set(view.execution_id, view);
    }
    if (applyTimer) return;
    applyTimer = setTimeout(() => {
      applyTimer = null;
      lastApply = Date.now();
      const batch = [...waiting.values()];
      waiting.clear();
      if (!stopped) apply(batch);
    }, Math.max(0, APPLY_GAP_MS - (Date.now() - lastApply)));
  };

  let lastReload = 0;
  const unsubscribe = subscribe((views) => {
    if (views !== null) {
      later(views);
      return;
    }
    // The stream lost changes (or just connected): read the page again, not too often.
    const now = Date.now();
    if (now - lastReload > RELOAD_GAP_MS) {
      lastReload = now;
      load();
    }
  });

  const apply = (views) => {
    const size = Number(filters.size);
    const incoming = [];
    for (const view of views) {
      if (table.update(view) || !matches(view)) continue;
      if (cursors.length === 1) incoming.push(view);
      else if (view.created_at_ms > table.newestCreated()) newer.add(view.execution_id);
    }
    const before = table.rows.size;
    const added = table.insert(incoming, size);
    if (added > size - before) hasMore = true; // some rows left this page for the next one
    if (newer.size) {
      notice.hidden = false;
      notice.replaceChildren(`${count(newer.size)} newer executions since this page was loaded.`,
        h("button", { type: "button", onclick: () => { cursors.splice(0, cursors.length, ""); load(); } }, "Show the newest"));
    }
    paint();
  };

  load();
  return () => {
    stopped = true;
    clearTimeout(applyTimer);
    unsubscribe();
  };
}
