// The node-wide event stream (GET /api/v1/events), one connection for every view of the page.
// Views subscribe with a function that receives each batch of execution records, or null when
// the node says this page fell behind (the view then reloads what it shows).

import { stream } from "./api.js";

const listeners = new Set();
const indicator = () => document.getElementById("live");
let running = false;

function show(state, text) {
  const el = indicator();
  if (!el) return;
  el.dataset.state = state;
  el.textContent = text;
}

function deliver(views) {
  for (const fn of listeners) {
    try {
      fn(views);
    } catch (error) {
      console.error(error);
    }
  }
}

async function run() {
  let wait = 1000;
  for (;;) {
    try {
      await stream("/api/v1/events", (kind, data) => {
        if (kind === "executions") deliver(data.executions);
        else if (kind === "lagged") deliver(null);
      }, {
        onOpen: () => {
          show("on", "live");
          wait = 1000;
          deliver(null); // whatever happened while this page was not connected: reload
        },
      });
      show("retry", "reconnecting…");
    } catch (error) {
      show("retry", error.status === 429 ? "live updates busy, retrying…" : "reconnecting…");
    }
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, 15000);
  }
}

/** Receive live execution changes until the returned function is called. */
export function subscribe(fn) {
  listeners.add(fn);
  if (!running) {
    running = true;
    run();
  }
  return () => listeners.delete(fn);
}
