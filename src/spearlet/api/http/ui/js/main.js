// The dashboard's entry: routes (#/overview, #/executions, #/executions/<id>, #/tasks,
// #/tasks/<id>) to views. A view is mount(main, params, query) -> a function that stops it.

import { hasToken, onTokenChange, request, signOut } from "./api.js";
import { errorText, h } from "./dom.js";
import { subscribe } from "./live.js";
import * as execution from "./execution.js";
import * as executions from "./executions.js";
import * as overview from "./overview.js";
import * as task from "./task.js";
import * as tasks from "./tasks.js";

const routes = [
  [/^\/(overview)?$/, overview, "overview"],
  [/^\/executions$/, executions, "executions"],
  [/^\/executions\/([^/]+)$/, execution, "executions"],
  [/^\/tasks$/, tasks, "tasks"],
  [/^\/tasks\/([^/]+)$/, task, "tasks"],
];

const main = document.getElementById("main");
let stop = () => {};

function parse() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(1) : "/";
  const [path, search = ""] = raw.split("?");
  return { path, query: new URLSearchParams(search) };
}

async function route() {
  if (location.hash && !location.hash.startsWith("#/")) return; // an in-page anchor (the skip link)
  const { path, query } = parse();
  stop();
  stop = () => {};
  const found = routes.find(([pattern]) => pattern.test(path));
  for (const link of document.querySelectorAll("nav a")) {
    if (found && link.dataset.nav === found[2]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  if (!found) {
    main.append(h("h1", { tabindex: -1 }, "Not found"), h("p", {}, h("a", { href: "#/overview" }, "Back to the overview")));
    return;
  }
  const [pattern, view] = found;
  const params = path.match(pattern).slice(1).map((p) => (p === undefined ? p : decodeURIComponent(p)));
  try {
    stop = view.mount(main, params, query) || (() => {});
  } catch (error) {
    showError(error);
  }
  // Where a screen reader and the keyboard should be after a route change: the view's heading.
  const heading = main.querySelector("h1");
  if (heading && document.activeElement === document.body) heading.focus({ preventScroll: true });
}

function showError(error) {
  main.prepend(h("p", { class: "error", role: "alert" }, errorText(error)));
}

async function nodeName() {
  try {
    const cluster = await request("/api/v1/cluster");
    document.getElementById("node-name").textContent = cluster.node_id;
  } catch {
    // shown once the node answers
  }
}

function setUp() {
  const out = document.getElementById("sign-out");
  out.hidden = !hasToken();
  onTokenChange((signedIn) => {
    out.hidden = !signedIn;
  });
  out.addEventListener("click", () => {
    signOut();
    location.reload();
  });
  document.getElementById("skip").addEventListener("click", (event) => {
    event.preventDefault();
    main.focus();
  });
  window.addEventListener("hashchange", () => {
    document.activeElement?.blur?.();
    route();
  });
  route();
  nodeName();
  subscribe(() => {}); // connected from the start: the header says whether the page is live
}

setUp();
