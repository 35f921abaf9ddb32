// Talking to the tunery server: the same /v1 API the SDK uses, with the key from sessionStorage, plus
// small DOM helpers. Every string from the API reaches the page through textContent or an attribute,
// never through innerHTML.

const KEY_NAME = "tunery.apiKey";

export const auth = {
  get key() { return sessionStorage.getItem(KEY_NAME) || ""; },
  set(key) { sessionStorage.setItem(KEY_NAME, key); },
  clear() { sessionStorage.removeItem(KEY_NAME); },
  onMissing: null,  // set by app.js: called on any 401
};

export class ApiError extends Error {
  constructor(status, body, fallback) {
    const e = (body && body.error) || {};
    super(e.message || fallback || `The server answered HTTP ${status}.`);
    this.status = status;
    this.param = e.param || null;
    this.code = e.code || null;
  }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (auth.key) h.Authorization = "Bearer " + auth.key;
  return h;
}

async function send(path, { method = "GET", body, form, signal } = {}) {
  const init = { method, signal, cache: "no-store", credentials: "omit" };
  if (form) {
    init.body = form;
    init.headers = headers();
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = headers({ "Content-Type": "application/json" });
  } else {
    init.headers = headers();
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, null, "The tunery server cannot be reached (" + err.message + ").");
  }
  if (!res.ok) {
    let data = null;
    try { data = await res.json(); } catch (_) { /* not JSON: keep the status message */ }
    const err = new ApiError(res.status, data);
    if (res.status === 401 && auth.onMissing) auth.onMissing(err);
    throw err;
  }
  return res;
}

export async function api(path, opts) {
  const res = await send(path, opts);
  return res.json();
}

export async function apiBlob(path) {
  const res = await send(path);
  return res.blob();
}

// Every item of a cursor-paged list (newest first for jobs and events).
export async function listAll(path, limit = 1000) {
  const out = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=${limit}` + (after ? `&after=${encodeURIComponent(after)}` : ""));
    out.push(...page.data);
    if (!page.has_more || !page.data.length) return out;
    after = page.data[page.data.length - 1].id;
  }
}

// New events since the ones already known (events are listed newest first): pages until a known id.
export async function newEvents(jobId, known) {
  const out = [];
  let after = null;
  for (;;) {
    const page = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?limit=${known.size ? 100 : 1000}`
      + (after ? `&after=${encodeURIComponent(after)}` : ""));
    let hit = false;
    for (const e of page.data) {
      if (known.has(e.id)) { hit = true; break; }
      out.push(e);
    }
    if (hit || !page.has_more || !page.data.length) return out;
    after = page.data[page.data.length - 1].id;
  }
}

// POST /v1/chat/completions with stream: true, yielding each chunk as the server sends it
// (server-sent events in OpenAI's format, ending with "data: [DONE]").
export async function* streamChat(body, signal) {
  const res = await send("/v1/chat/completions", { method: "POST", body: Object.assign({}, body, { stream: true }), signal });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk);
      yield chunk;
    }
  }
}

// --- DOM ---------------------------------------------------------------------------------------------

// h("p", {class: "x", onclick: fn}, "text", child…): strings become text nodes, never markup.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function when(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  seconds = Math.max(0, Math.round(seconds));
  const hh = Math.floor(seconds / 3600), mm = Math.floor((seconds % 3600) / 60), ss = seconds % 60;
  if (hh) return `${hh}h${String(mm).padStart(2, "0")}m`;
  if (mm) return `${mm}m${String(ss).padStart(2, "0")}s`;
  return `${ss}s`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function fmt(x, digits = 4) {
  if (x === null || x === undefined || x === "") return "";
  if (typeof x === "number") return Number.isInteger(x) ? String(x) : x.toPrecision(digits);
  return String(x);
}

export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export function statusBadge(status) {
  return h("span", { class: `badge st-${String(status).replace(/[^a-z_]/g, "")}` }, status);
}

// --- forms -------------------------------------------------------------------------------------------

// A labelled control with its own error slot (aria-describedby), so an API error can sit beside it.
export function field(id, labelText, control, hint) {
  control.id = id;
  const err = h("p", { class: "field-error", id: `${id}-error`, role: "alert" });
  control.setAttribute("aria-describedby", `${id}-error` + (hint ? ` ${id}-hint` : ""));
  return h("div", { class: "field", "data-field": id },
    h("label", { for: id }, labelText), control,
    hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null, err);
}

export function clearErrors(root) {
  for (const el of root.querySelectorAll(".field-error")) el.textContent = "";
  for (const el of root.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

// Put an API error next to the field its `param` names ("method.supervised.hyperparameters.n_epochs" →
// the n_epochs field), or in the form's own error slot when no field matches.
export function showError(root, err, fields, fallbackSlot) {
  const param = err.param || "";
  const parts = param.replace(/\[\d+\]/g, "").split(".").filter(Boolean);
  const candidates = [param, parts[parts.length - 1], parts[0]];
  for (const c of candidates) {
    const id = c && fields[c];
    const slot = id && root.querySelector(`#${id}-error`);
    if (slot) {
      slot.textContent = err.message;
      const control = root.querySelector(`#${id}`);
      if (control) { control.setAttribute("aria-invalid", "true"); control.focus(); }
      return slot;
    }
  }
  fallbackSlot.textContent = err.message;
  return fallbackSlot;
}
