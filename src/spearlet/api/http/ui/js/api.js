// Talking to the node: JSON requests and Server-Sent Event streams, both with the access token.
//
// Streams are read with fetch(), not EventSource: EventSource cannot send an Authorization header,
// and a token put in the URL instead would be written to access logs, proxies and the history.

const KEY = "spearlet.token";
let token = sessionStorage.getItem(KEY) || "";
let signingIn = null; // one prompt for every request that met a 401 meanwhile
const tokenListeners = new Set();

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function hasToken() {
  return Boolean(token);
}

export function onTokenChange(fn) {
  tokenListeners.add(fn);
}

function headers(json) {
  const out = {};
  if (token) out.Authorization = `Bearer ${token}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

async function send(path, { method = "GET", body, signal } = {}) {
  for (;;) {
    const response = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
    if (response.status !== 401) return response;
    await signIn();
  }
}

async function failure(response) {
  const text = await response.text();
  let error = null;
  try {
    error = JSON.parse(text).error;
  } catch {
    error = null;
  }
  return new ApiError(response.status, error?.code ?? String(response.status), error?.message ?? (text || response.statusText));
}

/** A JSON request; an error answer ({"error": {code, message}}) is thrown as an ApiError. */
export async function request(path, options = {}) {
  const response = await send(path, options);
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** Read a Server-Sent Events answer: onEvent(kind, data) for each event, onOpen() once connected.
 *  Resolves when the node ends the stream; rejects on a failure or when `signal` aborts. */
export async function stream(path, onEvent, { method = "GET", body, signal, onOpen } = {}) {
  const response = await send(path, { method, body, signal });
  if (!response.ok) throw await failure(response);
  onOpen?.();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      dispatch(buffer.slice(0, end), onEvent);
      buffer = buffer.slice(end + 2);
      end = buffer.indexOf("\n\n");
    }
  }
}

function dispatch(block, onEvent) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment: the node's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") kind = value;
    else if (field === "data") data.push(value);
  }
  if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
}

// Signing in

export function signOut() {
  token = "";
  sessionStorage.removeItem(KEY);
  for (const fn of tokenListeners) fn(false);
}

/** Ask for the token until the node accepts one; every request waiting on a 401 then goes on. */
export function signIn() {
  if (!signingIn) {
    signingIn = prompt().finally(() => { signingIn = null; });
  }
  return signingIn;
}

function prompt() {
  const dialog = document.getElementById("login");
  const form = document.getElementById("login-form");
  const input = document.getElementById("token");
  const error = document.getElementById("login-error");
  error.textContent = token ? "The node did not accept the saved token: enter it again." : "";
  input.value = "";
  return new Promise((resolve) => {
    const submit = async (event) => {
      event.preventDefault();
      const candidate = input.value.trim();
      if (!candidate) {
        error.textContent = "Enter the token.";
        input.focus();
        return;
      }
      const check = await fetch("/api/v1/health", { headers: { Authorization: `Bearer ${candidate}` }, cache: "no-store" });
      if (check.status === 401) {
        error.textContent = "That token was not accepted.";
        input.select();
        return;
      }
      token = candidate;
      sessionStorage.setItem(KEY, token);
      form.removeEventListener("submit", submit);
      dialog.removeEventListener("cancel", stay);
      dialog.close();
      for (const fn of tokenListeners) fn(true);
      resolve();
    };
    // Nothing works without the token: Escape does not close the prompt.
    const stay = (event) => event.preventDefault();
    form.addEventListener("submit", submit);
    dialog.addEventListener("cancel", stay);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}
