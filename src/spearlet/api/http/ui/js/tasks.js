// Tasks: each with its runtime, settings and pool of warm instances; and a form to register one.

import { request } from "./api.js";
import { badge, count, errorText, every, h } from "./dom.js";

const REFRESH_MS = 5000;
export const RUNTIMES = [
  ["process", "process: an executable, a new process per call"],
  ["python", "python: a module kept warm (settings: entry = module:function)"],
  ["wasm", "wasm: a WebAssembly/WASI module (.wasm or .wat)"],
];

/** `key = value` lines (or a JSON object) as task settings; throws with the line at fault. */
export function parseSettings(text) {
  const trimmed = text.trim();
  if (!trimmed) return {};
  if (trimmed.startsWith("{")) {
    const parsed = JSON.parse(trimmed);
    return Object.fromEntries(Object.entries(parsed).map(([k, v]) => [k, String(v)]));
  }
  const settings = {};
  trimmed.split("\n").forEach((line, i) => {
    if (!line.trim() || line.trim().startsWith("#")) return;
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`line ${i + 1}: write key = value`);
    settings[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  });
  return settings;
}

export function poolText(pool) {
  if (!pool) return "—";
  return `instances ${pool.instances} · idle ${pool.idle} · warm hits ${count(pool.warm_hits)}`;
}

export function mount(main) {
  const problem = h("p", { class: "error", role: "alert" });
  const tbody = h("tbody");
  main.append(
    h("h1", { tabindex: -1 }, "Tasks"),
    problem,
    h("div", { class: "table-wrap" }, h("table", { id: "tasks" },
      h("caption", { class: "visually-hidden" }, "Registered tasks"),
      h("thead", {}, h("tr", {}, ["Task", "Runtime", "Location", "Settings", "Executions", "Last status", "Pool"]
        .map((c) => h("th", { scope: "col" }, c)))),
      tbody)),
    registerForm());

  const refresh = async () => {
    try {
      const [list, pools] = await Promise.all([request("/api/v1/tasks?limit=1000"), request("/api/v1/pools")]);
      const byTask = new Map(pools.pools.map((p) => [p.task_id, p]));
      problem.textContent = "";
      tbody.replaceChildren(...list.tasks.map((t) => taskRow(t, byTask.get(t.task_id))));
      if (!list.tasks.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No tasks yet: register one below.")));
    } catch (error) {
      problem.textContent = errorText(error);
    }
  };
  return every(REFRESH_MS, refresh);
}

function taskRow(t, pool) {
  const spec = t.artifact_spec;
  const settings = Object.entries(spec.metadata || {});
  return h("tr", { "data-task": t.task_id },
    h("td", {}, h("a", { href: `#/tasks/${encodeURIComponent(t.task_id)}` }, t.task_id)),
    h("td", {}, spec.artifact_type),
    h("td", { class: "wrap mono" }, spec.location),
    h("td", { class: "wrap" }, settings.length ? settings.map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)) : h("span", { class: "muted" }, "defaults")),
    h("td", { class: "num" }, count(t.execution_count)),
    h("td", {}, t.execution_count ? badge(t.last_status) : h("span", { class: "muted" }, "—")),
    h("td", {}, poolText(pool)));
}

function registerForm() {
  const said = h("p", { role: "status", id: "register-status" });
  const settingsHint = h("p", { class: "hint", id: "settings-hint" },
    "One key = value a line, e.g. timeout_ms = 5000, max_retries = 1, min_instances = 1, network = none (README: Task settings).");
  const field = (id, text, input, hint) => h("div", {}, h("label", { for: id }, text), input, hint || null);
  const name = h("input", { id: "reg-name", name: "name", required: true, autocomplete: "off", spellcheck: "false" });
  const runtime = h("select", { id: "reg-runtime", name: "runtime" }, RUNTIMES.map(([v, t]) => h("option", { value: v }, t)));
  const where = h("input", { id: "reg-location", name: "location", required: true, spellcheck: "false",
    placeholder: "/srv/functions/shout.sh or https://…", "aria-describedby": "location-hint" });
  const description = h("input", { id: "reg-description", name: "description" });
  const checksum = h("input", { id: "reg-checksum", name: "checksum", spellcheck: "false", pattern: "[0-9a-fA-F]{64}", placeholder: "sha256, hex (optional)" });
  const settings = h("textarea", { id: "reg-settings", name: "settings", rows: 4, spellcheck: "false", "aria-describedby": "settings-hint" });
  const replace = h("input", { id: "reg-replace", type: "checkbox", name: "replace" });
  const submit = h("button", { type: "submit", class: "primary" }, "Register");
  const form = h("form", { id: "register", "aria-labelledby": "register-title", novalidate: true },
    h("div", { class: "form-row" },
      field("reg-name", "Task name", name),
      field("reg-runtime", "Runtime", runtime)),
    field("reg-location", "Artifact location", where,
      h("p", { class: "hint", id: "location-hint" }, "A path on the node, or a URL the node may fetch (its artifact_dirs and artifact_schemes settings).")),
    h("div", { class: "form-row" },
      field("reg-description", "Description", description),
      field("reg-checksum", "Checksum", checksum)),
    field("reg-settings", "Settings", settings, settingsHint),
    h("div", { class: "actions" },
      h("label", { class: "inline", for: "reg-replace" }, replace, "Replace a task of this name"),
      submit, said));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    said.className = "";
    let metadata;
    try {
      metadata = parseSettings(settings.value);
      settings.removeAttribute("aria-invalid");
    } catch (error) {
      settings.setAttribute("aria-invalid", "true");
      said.className = "error";
      said.textContent = `Settings: ${error.message}`;
      settings.focus();
      return;
    }
    for (const input of [name, where, checksum]) {
      if (!input.checkValidity()) {
        said.className = "error";
        said.textContent = `${input.labels[0].textContent}: ${input.validationMessage}`;
        input.focus();
        return;
      }
    }
    submit.disabled = true;
    said.textContent = "Registering… (the node fetches and checks the artifact)";
    try {
      const answer = await request("/api/v1/tasks", {
        method: "POST",
        body: {
          task_name: name.value.trim(),
          task_description: description.value,
          replace: replace.checked,
          artifact_spec: { artifact_type: runtime.value, location: where.value.trim(), checksum: checksum.value.trim(), metadata },
        },
      });
      said.className = "ok";
      said.textContent = `${answer.created ? "Registered" : "Replaced"} ${answer.task.task_id}.`;
      location.hash = `#/tasks/${encodeURIComponent(answer.task.task_id)}`;
    } catch (error) {
      said.className = "error";
      said.textContent = errorText(error);
    } finally {
      submit.disabled = false;
    }
  });
  return h("section", { class: "panel spaced" }, h("h2", { id: "register-title" }, "Register a task"), form);
}
