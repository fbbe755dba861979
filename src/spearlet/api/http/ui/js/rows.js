// A table of executions (the record view of /api/v1/executions?view=record and of the event
// stream), kept current row by row: a changed execution repaints its own row only.

import { badge, duration, h, time } from "./dom.js";

// Each column's share of the width (the table's layout is fixed: see style.css).
const COLUMNS = [
  ["Execution", "24%"], ["Task", "9%"], ["Function", "8%"], ["Status", "10%"], ["Mode", "7%"],
  ["Created", "16%"], ["Duration", "8%"], ["Attempts", "7%"], ["Node", "11%"],
];

function cells(view) {
  return [
    h("td", { class: "id" }, h("a", { href: `#/executions/${encodeURIComponent(view.execution_id)}` }, view.execution_id)),
    h("td", {}, h("a", { href: `#/tasks/${encodeURIComponent(view.task_id)}` }, view.task_id)),
    h("td", {}, view.function_name || h("span", { class: "muted" }, "default")),
    h("td", {}, badge(view.status)),
    h("td", {}, view.execution_mode),
    h("td", {}, time(view.created_at_ms)),
    h("td", { class: "num" }, view.completed && view.started_at_ms ? duration(view.execution_time_ms) : "—"),
    h("td", { class: "num" }, String(view.attempts)),
    h("td", {}, view.node || "—"),
  ];
}

export class ExecutionTable {
  constructor(caption) {
    this.rows = new Map(); // execution id -> <tr>
    this.tbody = h("tbody", { onkeydown: (event) => this.keys(event) });
    this.empty = h("p", { class: "muted", hidden: true }, "No executions match.");
    this.element = h("div", {},
      h("div", { class: "table-wrap" },
        h("table", { id: "executions", class: "executions" },
          h("caption", { class: "visually-hidden" }, caption),
          h("colgroup", {}, COLUMNS.map(([, width]) => h("col", { style: null, width }))),
          h("thead", {}, h("tr", {}, COLUMNS.map(([name]) => h("th", { scope: "col" }, name)))),
          this.tbody)),
      this.empty);
  }

  row(view, fresh = false) {
    const tr = h("tr", { "data-id": view.execution_id, "data-status": view.status, class: fresh ? "fresh" : null }, cells(view));
    tr.view = view;
    return tr;
  }

  /** Show exactly these executions, in this order. */
  replace(views) {
    this.rows = new Map(views.map((v) => [v.execution_id, this.row(v)]));
    this.tbody.replaceChildren(...this.rows.values());
    this.empty.hidden = views.length > 0;
  }

  has(id) {
    return this.rows.has(id);
  }

  /** Repaint the row of an execution shown; false when it is not shown. */
  update(view) {
    const old = this.rows.get(view.execution_id);
    if (!old) return false;
    if (old.view.status === view.status && old.view.attempts === view.attempts && old.view.completed === view.completed) return true;
    const focused = old.contains(document.activeElement) ? document.activeElement.closest("td") : null;
    const column = focused ? [...old.children].indexOf(focused) : -1;
    const tr = this.row(view);
    old.replaceWith(tr);
    this.rows.set(view.execution_id, tr);
    if (column >= 0) tr.children[column].querySelector("a")?.focus(); // keep the keyboard where it was
    return true;
  }

  /** New executions at their places, newest first; the oldest beyond `limit` leave the page.
   *  One pass for a whole batch: under a flood only the rows that stay on the page are built. */
  insert(views, limit) {
    if (!views.length) return 0;
    const flood = views.length > 10; // no highlight for each of a flood: it would only flicker
    const incoming = [...views].sort((a, b) => Number(b.created_at_ms) - Number(a.created_at_ms)).slice(0, limit);
    const shown = [...this.tbody.children];
    const kept = [];
    let added = 0;
    while (kept.length < limit && (incoming.length || shown.length)) {
      const takeNew = incoming.length && (!shown.length || Number(incoming[0].created_at_ms) >= Number(shown[0].view.created_at_ms));
      if (takeNew) {
        kept.push(this.row(incoming.shift(), !flood));
        added += 1;
      } else {
        kept.push(shown.shift());
      }
    }
    if (!added) return 0;
    // Only what changed moves: rows that stay keep their layout and paint.
    const staying = new Set(kept);
    for (const tr of [...this.tbody.children]) if (!staying.has(tr)) tr.remove();
    let cursor = this.tbody.firstElementChild;
    for (const tr of kept) {
      if (tr === cursor) cursor = cursor.nextElementSibling;
      else this.tbody.insertBefore(tr, cursor);
    }
    this.rows = new Map(kept.map((tr) => [tr.dataset.id, tr]));
    this.empty.hidden = true;
    return added;
  }

  newestCreated() {
    return Number(this.tbody.firstElementChild?.view.created_at_ms ?? 0);
  }

  lastId() {
    return this.tbody.lastElementChild?.dataset.id ?? "";
  }

  /** Up and down (or k and j) move between rows, keeping the column. */
  keys(event) {
    const step = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1 }[event.key];
    if (!step || event.altKey || event.ctrlKey || event.metaKey) return;
    const td = event.target.closest("td");
    const tr = td?.parentElement;
    if (!tr) return;
    const next = step > 0 ? tr.nextElementSibling : tr.previousElementSibling;
    const link = next?.children[[...tr.children].indexOf(td)]?.querySelector("a") ?? next?.querySelector("a");
    if (link) {
      event.preventDefault();
      link.focus();
    }
  }
}
