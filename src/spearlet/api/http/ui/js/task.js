// One task: its settings and pool, its recent executions (live), and a form to invoke it with
// parameters written as JSON, synchronously (the result shown here) or asynchronously (followed
// on the execution's page).

import { request } from "./api.js";
import { anyValue, badge, count, duration, errorText, every, h, time, valueView } from "./dom.js";
import { subscribe } from "./live.js";
import { ExecutionTable } from "./rows.js";
import { poolText } from "./tasks.js";

const RECENT = 10;
const REFRESH_MS = 5000;

export function mount(main, [taskId]) {
  const problem = h("p", { class: "error", role: "alert" });
  const facts = h("dl", { class: "facts", id: "task-facts" });
  const pool = h("p", { id: "pool" }, "—");
  const table = new ExecutionTable(`Recent executions of ${taskId}`);
  main.append(
    h("p", {}, h("a", { href: "#/tasks" }, "← Tasks")),
    h("h1", { tabindex: -1 }, "Task ", h("code", {}, taskId)),
    problem,
    h("div", { class: "grid two" },
      h("section", { class: "panel", "aria-labelledby": "settings-title" }, h("h2", { id: "settings-title" }, "Settings"), facts,
        h("h2", { class: "spaced" }, "Instance pool"), pool),
      invokeForm(taskId)),
    h("section", { class: "panel", "aria-labelledby": "recent-title" },
      h("h2", { id: "recent-title" }, "Recent executions ", h("a", { href: `#/executions?task=${encodeURIComponent(taskId)}`, class: "muted" }, "(all)")),
      table.element));

  const refresh = async () => {
    try {
      const [found, pools, recent] = await Promise.all([
        request(`/api/v1/tasks/${encodeURIComponent(taskId)}?execution_limit=1`),
        request("/api/v1/pools"),
        request(`/api/v1/executions?view=record&limit=${RECENT}&task_id=${encodeURIComponent(taskId)}`),
      ]);
      problem.textContent = "";
      showFacts(facts, found.task);
      const mine = pools.pools.find((p) => p.task_id === taskId);
      pool.textContent = mine
        ? `${poolText(mine)} · starting ${mine.starting} · callers waiting ${mine.waiting} · started ${count(mine.started)} · min ${mine.min_instances}, max ${mine.max_instances}`
        : "No warm instances: this runtime starts each call afresh, or none has run yet.";
      table.replace(recent.executions);
    } catch (error) {
      problem.textContent = errorText(error);
    }
  };
  const stopRefresh = every(REFRESH_MS, refresh);
  const unsubscribe = subscribe((views) => {
    if (views === null) return; // the next refresh reads the list again
    table.insert(views.filter((view) => view.task_id === taskId && !table.update(view)), RECENT);
  });
  return () => {
    stopRefresh();
    unsubscribe();
  };
}

function showFacts(dl, task) {
  const spec = task.artifact_spec;
  const rows = [
    ["Runtime", spec.artifact_type],
    ["Location", h("code", {}, spec.location)],
    ["Description", task.metadata?.description || "—"],
    ["Version", spec.version || "—"],
    ["Checksum", spec.checksum ? h("code", {}, spec.checksum) : "—"],
    ["Registered", time(Number(task.created_at))],
    ["Updated", time(Number(task.updated_at))],
    ["Executions", count(task.execution_count)],
    ["Last status", task.execution_count ? badge(task.last_status) : "—"],
  ];
  for (const [key, value] of Object.entries(spec.metadata || {})) rows.push([key, h("code", {}, value)]);
  dl.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function invokeForm(taskId) {
  const fn = h("input", { id: "inv-function", name: "function", spellcheck: "false", placeholder: "default", autocomplete: "off" });
  const params = h("textarea", { id: "inv-params", name: "parameters", rows: 6, spellcheck: "false", "aria-describedby": "params-hint params-error" }, "{}");
  const paramsError = h("p", { class: "error", id: "params-error", "aria-live": "polite" });
  const sync = h("input", { type: "radio", name: "mode", value: "SYNC", id: "mode-sync", checked: true });
  const async_ = h("input", { type: "radio", name: "mode", value: "ASYNC", id: "mode-async" });
  const timeout = h("input", { id: "inv-timeout", name: "timeout", type: "number", min: "0", step: "1", placeholder: "task default", inputmode: "numeric" });
  const submit = h("button", { type: "submit", class: "primary", id: "invoke" }, "Invoke");
  const outcome = h("div", { id: "outcome", "aria-live": "polite" });

  const check = () => {
    try {
      const value = JSON.parse(params.value || "{}");
      if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("parameters must be a JSON object, {\"name\": value, …}");
      params.removeAttribute("aria-invalid");
      paramsError.textContent = "";
      return value;
    } catch (error) {
      params.setAttribute("aria-invalid", "true");
      paramsError.textContent = error.message;
      return null;
    }
  };
  params.addEventListener("input", check);
  // Tab in the editor moves focus (keyboard users must be able to leave it); Ctrl/Cmd+Enter invokes.
  params.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  const form = h("form", { id: "invoke-form", "aria-labelledby": "invoke-title", novalidate: true },
    h("label", { for: "inv-function" }, "Function"), fn,
    h("label", { for: "inv-params" }, "Parameters (JSON object)"), params,
    h("p", { class: "hint", id: "params-hint" }, "For example {\"name\": \"Ada\"}. Ctrl+Enter invokes."), paramsError,
    h("div", { class: "form-row" },
      h("fieldset", {}, h("legend", {}, "Mode"), h("div", { class: "inline" },
        h("label", { for: "mode-sync" }, sync, "sync: wait for the result"),
        h("label", { for: "mode-async" }, async_, "async: follow it"))),
      h("div", {}, h("label", { for: "inv-timeout" }, "Timeout (ms)"), timeout)),
    h("div", { class: "actions" }, submit),
    outcome);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const parameters = check();
    if (parameters === null) {
      params.focus();
      return;
    }
    const mode = async_.checked ? "ASYNC" : "SYNC";
    const body = {
      invocation_type: "INVOCATION_TYPE_EXISTING_TASK",
      task_id: taskId,
      function_name: fn.value.trim(),
      execution_mode: `EXECUTION_MODE_${mode}`,
      parameters,
    };
    if (timeout.value) body.context = { timeout_ms: String(Number(timeout.value)) };
    submit.disabled = true;
    outcome.replaceChildren(h("p", { class: "muted" }, mode === "SYNC" ? "Running…" : "Submitting…"));
    try {
      const answer = await request("/api/v1/invoke", { method: "POST", body });
      const link = h("a", { href: `#/executions/${encodeURIComponent(answer.execution_id)}`, id: "outcome-link" }, answer.execution_id);
      if (mode === "ASYNC") {
        location.hash = `#/executions/${encodeURIComponent(answer.execution_id)}`;
        return;
      }
      const result = answer.result || {};
      const value = anyValue(result.result);
      outcome.replaceChildren(
        h("p", { class: "inline" }, badge(result.status), link, result.started_at ? `in ${duration(Number(result.execution_time_ms))}` : ""),
        answer.message ? h("p", { class: result.status === "EXECUTION_STATUS_COMPLETED" ? "muted" : "error" }, answer.message) : null,
        result.error_code ? h("p", { class: "error" }, `${result.error_code}: ${result.error_message}`) : null,
        value !== null ? valueView(value, "Result") : null);
    } catch (error) {
      outcome.replaceChildren(h("p", { class: "error", role: "alert" }, errorText(error)));
    } finally {
      submit.disabled = false;
    }
  });
  return h("section", { class: "panel", "aria-labelledby": "invoke-title" }, h("h2", { id: "invoke-title" }, "Invoke"), form);
}
