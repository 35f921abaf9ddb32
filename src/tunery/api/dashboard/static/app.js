// The dashboard's shell: hash routes (#/jobs, #/jobs/<id>, …), the API-key gate, page lifecycles.

import { api, auth, clear, field, h } from "./api.js";
import { jobsPage, jobPage, newJobPage, comparePage } from "./jobs.js";
import { filesPage } from "./files.js";
import { playgroundPage } from "./playground.js";
import { modelsPage } from "./models.js";

const main = document.getElementById("main");
let cleanup = null;
let gateShown = false;

const ROUTES = [
  [/^\/?$/, () => jobsPage, "jobs"],
  [/^\/jobs$/, () => jobsPage, "jobs"],
  [/^\/jobs\/([^/]+)$/, () => jobPage, "jobs"],
  [/^\/new$/, () => newJobPage, "new"],
  [/^\/files$/, () => filesPage, "files"],
  [/^\/playground$/, () => playgroundPage, "playground"],
  [/^\/compare$/, () => comparePage, "compare"],
  [/^\/models$/, () => modelsPage, "models"],
];

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query] = raw.split("?");
  return { path, query: new URLSearchParams(query || "") };
}

function stopPage() {
  if (cleanup) { try { cleanup(); } catch (_) { /* a page's cleanup must not stop navigation */ } }
  cleanup = null;
}

function render() {
  if (gateShown) return;
  stopPage();
  const { path, query } = parseHash();
  clear(main);
  for (const a of document.querySelectorAll("[data-nav]")) a.removeAttribute("aria-current");
  for (const [re, page, nav] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    const link = document.querySelector(`[data-nav="${nav}"]`);
    if (link) link.setAttribute("aria-current", "page");
    const ctx = { main, query, args: m.slice(1).map(decodeURIComponent), navigate };
    try {
      cleanup = page()(ctx) || null;
    } catch (err) {
      main.append(h("p", { class: "error", role: "alert" }, err.message));
    }
    return;
  }
  main.append(h("h1", {}, "Not found"), h("p", {}, "No such page. "), h("a", { href: "#/jobs" }, "Back to the jobs"));
}

export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function updateKeybox() {
  const box = document.getElementById("keybox");
  const key = auth.key;
  box.hidden = !key;
  document.getElementById("keylabel").textContent = key ? `Key ${key.slice(0, 7)}…${key.slice(-4)}` : "";
}

// The API says keys exist by answering 401 without one; then the page asks for a key. It is kept in
// sessionStorage (this tab only, gone when it closes), sent as a Bearer header, never put in a URL or cookie.
function showGate(err) {
  if (gateShown) return;
  gateShown = true;
  stopPage();
  clear(main);
  const input = h("input", { type: "password", autocomplete: "off", spellcheck: "false", required: true, class: "wide" });
  const f = field("api-key", "API key", input, "From `tunery keys create --org NAME`. Kept in this tab's session storage only.");
  const msg = f.querySelector(".field-error");
  if (auth.key) msg.textContent = err.message;  // a key was given and refused (revoked or mistyped)
  const form = h("form", { class: "card narrow", novalidate: true }, h("h1", {}, "API key needed"),
    h("p", {}, "This server has API keys: each shows only its organization's files, jobs and models."),
    f, h("button", { type: "submit" }, "Continue"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    if (!key) { msg.textContent = "Enter a key."; input.focus(); return; }
    auth.set(key);
    try {
      await api("/v1/models");
    } catch (e) {
      gateShown = false;
      showGate(e);  // refused (revoked or mistyped): ask again, with the API's message
      return;
    }
    gateShown = false;
    updateKeybox();
    render();
  });
  main.append(form);
  input.focus();
}

auth.onMissing = showGate;

document.getElementById("forget-key").addEventListener("click", () => {
  auth.clear();
  updateKeybox();
  gateShown = false;
  boot();
});

async function boot() {
  updateKeybox();
  try {
    await api("/v1/models");
  } catch (err) {
    if (err.status === 401) return;  // the gate is showing
    clear(main);
    main.append(h("p", { class: "error", role: "alert" }, err.message));
    return;
  }
  render();
}

window.addEventListener("hashchange", render);
boot();
