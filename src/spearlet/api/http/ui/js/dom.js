// Building the page. Every value from the node goes in as text (textContent), never as markup:
// the page holds the access token, and a task name or a result must not be able to run code.

/** An element: h("a", {href: "#/x", class: "c", onclick: fn}, "text", child, [more]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element with attributes. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) el.setAttribute(name, String(value));
  }
  for (const child of children) if (child) el.append(child);
  return el;
}

// Formatting

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const number = new Intl.NumberFormat();

export function time(ms) {
  return ms ? dateTime.format(new Date(Number(ms))) : "—";
}

export function clockTime(ms) {
  return clock.format(new Date(Number(ms)));
}

export function count(n) {
  return number.format(Number(n) || 0);
}

export function duration(ms) {
  if (ms === null || ms === undefined || ms === "") return "—";
  const v = Number(ms);
  if (v < 1000) return `${v} ms`;
  if (v < 60_000) return `${(v / 1000).toFixed(v < 10_000 ? 2 : 1)} s`;
  const minutes = Math.floor(v / 60_000);
  if (minutes < 60) return `${minutes} min ${Math.round((v % 60_000) / 1000)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function bytes(n) {
  const v = Number(n) || 0;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = v;
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i += 1; }
  return i ? `${x.toFixed(1)} ${units[i]}` : `${v} B`;
}

export function uptime(seconds) {
  return duration(Number(seconds) * 1000);
}

/** A status as the node writes it (COMPLETED, or EXECUTION_STATUS_COMPLETED) as a badge. */
export function badge(status) {
  const name = String(status || "UNKNOWN").replace(/^EXECUTION_STATUS_/, "");
  return h("span", { class: `badge ${name}`, "data-status": name }, name);
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

export function base64ToBytes(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) out[i] = raw.charCodeAt(i);
  return out;
}

export function hex(data) {
  const parts = [];
  for (let i = 0; i < data.length; i += 16) {
    const row = Array.from(data.subarray(i, i + 16), (b) => b.toString(16).padStart(2, "0"));
    parts.push(`${i.toString(16).padStart(8, "0")}  ${row.join(" ")}`);
  }
  return parts.join("\n");
}

/** A value the node returned as bytes (`{"bytes_base64": ...}`), or null for any other value. */
export function asBytes(value) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "bytes_base64" && typeof value.bytes_base64 === "string") {
      return value.bytes_base64;
    }
  }
  return null;
}

/** A JSON value in a <pre>; bytes with a choice of base64 or hex; text as it is. */
export function valueView(value, label) {
  const b64 = asBytes(value);
  if (b64 === null) {
    const text = typeof value === "string" ? value : pretty(value);
    return h("pre", { class: "block", "aria-label": label, tabindex: 0 }, text);
  }
  const data = base64ToBytes(b64);
  const pre = h("pre", { class: "block", "aria-label": `${label} (base64)`, tabindex: 0 }, b64);
  const name = `enc-${Math.random().toString(36).slice(2)}`;
  const pick = (mode) => {
    pre.textContent = mode === "hex" ? hex(data) : b64;
    pre.setAttribute("aria-label", `${label} (${mode})`);
  };
  const radios = h("fieldset", { class: "inline" },
    h("legend", {}, `${count(data.length)} bytes, shown as`),
    h("label", {}, h("input", { type: "radio", name, value: "base64", checked: true, onchange: () => pick("base64") }), "base64"),
    h("label", {}, h("input", { type: "radio", name, value: "hex", onchange: () => pick("hex") }), "hex"),
  );
  return h("div", {}, radios, pre);
}

/** A chunk or result as the wire packs it (google.protobuf.Any in JSON) as text. */
export function anyText(packed) {
  if (!packed || !packed["@type"]) return "";
  const type = packed["@type"].split("/").pop();
  if (type === "google.protobuf.StringValue") return packed.value ?? "";
  if (type === "google.protobuf.BytesValue") {
    const data = base64ToBytes(packed.value ?? "");
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(data);
    } catch {
      return hex(data);
    }
  }
  return typeof packed.value === "string" ? packed.value : JSON.stringify(packed.value);
}

/** The plain value of a packed result, as the record view gives it (bytes as bytes_base64). */
export function anyValue(packed) {
  if (!packed || !packed["@type"]) return null;
  const type = packed["@type"].split("/").pop();
  if (type === "google.protobuf.BytesValue") return { bytes_base64: packed.value ?? "" };
  return packed.value ?? null;
}

/** Debounce to one call per animation frame: many live changes, one repaint. */
export function perFrame(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; fn(); });
  };
}

/** What went wrong, for a person: the node's error code and message when it sent one. */
export function errorText(error) {
  if (error && error.code && error.status) return `${error.code}: ${error.message}`;
  return String(error?.message || error);
}

/** Run `fn` now and every `ms` until the returned function is called; never two at once. */
export function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      await fn();
    } finally {
      if (!stopped) timer = setTimeout(tick, ms);
    }
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
