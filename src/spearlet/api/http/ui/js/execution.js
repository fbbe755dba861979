// One execution: what was asked, how it went, what came out; cancel it, run it again, or follow
// it live (its status changes and each chunk of output as the function produces it).

import { request, stream } from "./api.js";
import { anyText, badge, bytes, clockTime, duration, errorText, h, time, valueView } from "./dom.js";

const LOG_LINES = 200;

export function mount(main, [id]) {
  const path = `/api/v1/executions/${encodeURIComponent(id)}`;
  const statusSlot = h("span", { id: "status" });
  const problem = h("p", { class: "error", role: "alert" });
  const said = h("p", { class: "muted", role: "status", id: "action-status" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel", disabled: true, onclick: () => doCancel() }, "Cancel");
  const rerun = h("button", { type: "button", id: "rerun", disabled: true, onclick: () => doRerun() }, "Re-run");
  const follow = h("button", { type: "button", id: "follow", "aria-pressed": "false", disabled: true, onclick: () => toggleFollow() }, "Follow live");
  const left = h("div", { class: "column" });
  const right = h("div", { class: "column" });
  const liveOut = h("pre", { class: "block log", id: "live-output", tabindex: 0, "aria-label": "Live output" });
  const livePanel = h("section", { class: "panel", hidden: true, "aria-labelledby": "live-title" },
    h("h2", { id: "live-title" }, "Live output"), liveOut);
  main.append(
    h("p", {}, h("a", { href: "#/executions" }, "← Executions")),
    h("h1", { tabindex: -1 }, "Execution ", h("code", {}, id), statusSlot),
    h("div", { class: "actions toolbar" }, cancel, rerun, follow, said),
    problem, h("div", { class: "detail", id: "detail" }, left, h("div", { class: "column" }, livePanel, right)));

  let record = null;
  let following = null; // AbortController of the live watch
  let stopped = false;

  const load = async () => {
    try {
      record = await request(`${path}?include_logs=true&include_params=true`);
    } catch (error) {
      problem.textContent = errorText(error);
      return;
    }
    if (stopped) return;
    problem.textContent = "";
    render(record);
    if (!record.completed && !following) startFollow();
  };

  const render = (r) => {
    statusSlot.replaceChildren(badge(r.status));
    cancel.disabled = r.completed;
    rerun.disabled = false;
    follow.disabled = r.completed && !following;
    const queueWait = r.started_at_ms ? r.started_at_ms - r.created_at_ms : null;
    const facts = [
      ["Task", h("a", { href: `#/tasks/${encodeURIComponent(r.task_id)}` }, r.task_id)],
      ["Function", r.function_name || "default"],
      ["Mode", r.execution_mode],
      ["Attempts", String(r.attempts)],
      ["Node", r.node || "—"],
      ["Instance", r.instance_id || "—"],
      ["Created", time(r.created_at_ms)],
      ["Started", time(r.started_at_ms)],
      ["Completed", time(r.completed_at_ms)],
      ["Queue wait", queueWait === null ? "—" : duration(queueWait)],
      ["Execution time", r.completed && r.started_at_ms ? duration(r.execution_time_ms) : "—"],
      ["Memory", r.memory_used_bytes ? bytes(r.memory_used_bytes) : "—"],
    ];
    const metrics = Object.entries(r.metrics || {});
    const summary = [panel("Summary", h("dl", { class: "facts", id: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])))];
    if (metrics.length) {
      summary.push(panel("Metrics", h("dl", { class: "facts" }, metrics.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))));
    }
    left.replaceChildren(...summary);
    const sections = [];
    if (r.error_code || r.error_message) {
      sections.push(panel("Error", h("dl", { class: "facts", id: "error" },
        h("dt", {}, "Code"), h("dd", {}, h("code", {}, r.error_code || "—")),
        h("dt", {}, "Message"), h("dd", {}, r.error_message || "—"))));
    }
    sections.push(
      panel("Result", "result" in r ? valueView(r.result, "Result") : h("p", { class: "muted" }, r.completed ? "No result." : "Not finished yet."), "result"),
      panel("Parameters", valueView(r.parameters ?? {}, "Parameters"), "parameters"),
    );
    const logs = r.logs || [];
    const tail = logs.slice(-LOG_LINES);
    sections.push(panel(logs.length > LOG_LINES ? `Log tail (last ${LOG_LINES} of ${logs.length} lines)` : "Log tail",
      tail.length ? h("pre", { class: "block log", tabindex: 0, "aria-label": "Log tail", id: "logs" }, tail.join("\n"))
        : h("p", { class: "muted" }, "No log lines."), "log"));
    right.replaceChildren(...sections);
  };

  const doCancel = async () => {
    cancel.disabled = true;
    said.textContent = "Cancelling…";
    try {
      const answer = await request(`${path}/cancel`, { method: "POST", body: { reason: "cancelled from the dashboard" } });
      said.textContent = answer.message;
    } catch (error) {
      said.textContent = errorText(error);
    }
    await load();
  };

  const doRerun = async () => {
    rerun.disabled = true;
    said.textContent = "Starting it again…";
    try {
      const answer = await request(`${path}/rerun`, { method: "POST" });
      location.hash = `#/executions/${encodeURIComponent(answer.execution_id)}`;
    } catch (error) {
      said.textContent = errorText(error);
      rerun.disabled = false;
    }
  };

  const toggleFollow = () => (following ? stopFollow() : startFollow());

  const startFollow = () => {
    following = new AbortController();
    follow.textContent = "Stop following";
    follow.setAttribute("aria-pressed", "true");
    follow.disabled = false;
    livePanel.hidden = false;
    liveOut.textContent = "";
    const mine = following;
    let shown = "";
    const note = (text) => liveOut.append(h("span", { class: "muted" }, `[${clockTime(Date.now())}] ${text}\n`));
    stream(`${path}/events`, (kind, message) => {
      const status = String(message.status || "").replace(/^EXECUTION_STATUS_/, "");
      if (status && status !== shown && kind !== "result") {
        shown = status;
        note(status.toLowerCase());
        statusSlot.replaceChildren(badge(status));
      }
      if (message.chunk_data) liveOut.append(anyText(message.chunk_data), kind === "chunk" ? "" : "\n");
      if (kind === "result") {
        note(`${status.toLowerCase()}${message.error_message ? `: ${message.error_message}` : ""}`);
        load();
      }
    }, { signal: mine.signal, onOpen: () => note("following") }).catch((error) => {
      if (!mine.signal.aborted) said.textContent = `Following stopped: ${errorText(error)}`;
    }).finally(() => {
      if (following === mine) stopFollow();
    });
  };

  const stopFollow = () => {
    following?.abort();
    following = null;
    follow.textContent = "Follow live";
    follow.setAttribute("aria-pressed", "false");
    follow.disabled = Boolean(record?.completed);
  };

  load();
  return () => {
    stopped = true;
    following?.abort();
  };
}

function panel(title, content, id) {
  const headingId = `h-${title.toLowerCase().replace(/[^a-z]+/g, "-")}`;
  return h("section", { class: "panel", "aria-labelledby": headingId, id },
    h("h2", { id: headingId }, title), content);
}
