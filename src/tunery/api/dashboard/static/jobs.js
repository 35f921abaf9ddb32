// Jobs: the list, one job (curves, events, checkpoints, actions), the new-job form, and compare.

import { api, apiBlob, clear, clearErrors, duration, field, FINISHED, fmt, h, listAll, newEvents, showError,
  statusBadge, when } from "./api.js";
import { lineChart, metricSeries } from "./chart.js";

const POLL_MS = 2000;
const JOB_POLL_MS = 1000;  // one job's page: the curve should move step by step
const STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"];
const HP_KEYS = ["n_epochs", "batch_size", "learning_rate_multiplier", "beta"];

function jobDuration(job) {
  const end = job.finished_at || (FINISHED.has(job.status) ? null : Date.now() / 1000);
  return end ? duration(end - job.created_at) : "";
}

function methodOf(job) {
  const m = job.method || {};
  const type = m.type || "supervised";
  const hp = Object.assign({}, job.hyperparameters || {}, ((m[type] || {}).hyperparameters) || {});
  return { type, hp };
}

// A poller that runs fn now and every POLL_MS until stopped; a failing poll shows its error and retries.
function poller(fn, errSlot, every = POLL_MS) {
  let timer = null, stopped = false;
  const tick = async () => {
    try {
      const again = await fn();
      if (errSlot) errSlot.textContent = "";
      if (again === false) return;
    } catch (err) {
      if (err.status === 401) return;  // the key gate is showing
      if (errSlot) errSlot.textContent = err.message;
      if (err.status === 404) return;  // gone (or another organization's): nothing to follow
    }
    if (!stopped) timer = setTimeout(tick, every);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

// --- the list -----------------------------------------------------------------------------------------

export function jobsPage({ main, query, navigate }) {
  const filter = h("select", {}, h("option", { value: "" }, "all"), STATUSES.map((s) => h("option", { value: s }, s)));
  filter.value = query.get("status") || "";
  filter.addEventListener("change", () => navigate(filter.value ? `#/jobs?status=${filter.value}` : "#/jobs"));
  const body = h("tbody");
  const count = h("p", { class: "muted", "aria-live": "polite" });
  const err = h("p", { class: "error", role: "alert" });
  main.append(
    h("div", { class: "title-row" }, h("h1", {}, "Fine-tuning jobs"), h("a", { class: "button", href: "#/new" }, "New job")),
    h("div", { class: "toolbar" }, field("status-filter", "Status", filter)),
    err,
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Job", "Status", "Model", "Fine-tuned model", "Created", "Duration"].map((c) => h("th", { scope: "col" }, c)))),
      body)),
    count);
  let lastSig = "";
  return poller(async () => {
    const page = await api("/v1/fine_tuning/jobs?limit=100");  // the newest 100, every 2 s
    const jobs = page.data;
    const shown = filter.value ? jobs.filter((j) => j.status === filter.value) : jobs;
    // Redraw only when something changed, so keyboard focus on a link survives the polling.
    const sig = JSON.stringify(shown);
    if (sig === lastSig) {
      for (const j of shown) {
        const cell = body.querySelector(`tr[data-job="${CSS.escape(j.id)}"] .dur`);
        if (cell) cell.textContent = jobDuration(j);
      }
      return;
    }
    lastSig = sig;
    clear(body);
    for (const j of shown) {
      body.append(h("tr", { "data-job": j.id },
        h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id), j.user_provided_suffix ? h("div", { class: "muted" }, j.user_provided_suffix) : null),
        h("td", {}, statusBadge(j.status)),
        h("td", { class: "mono" }, j.model),
        h("td", { class: "mono" }, j.fine_tuned_model || ""),
        h("td", { class: "nowrap" }, when(j.created_at)),
        h("td", { class: "dur nowrap" }, jobDuration(j))));
    }
    count.textContent = jobs.length ? `${shown.length} of ${page.has_more ? "the newest " : ""}${jobs.length} jobs` + (filter.value ? ` (${filter.value})` : "")
      : "No jobs yet. Upload a file, then create a job.";
  }, err);
}

// --- one job ------------------------------------------------------------------------------------------

function hpTable(job) {
  const { type, hp } = methodOf(job);
  const rows = [["method", type]];
  for (const k of HP_KEYS) if (k in hp) rows.push([k, fmt(hp[k])]);
  rows.push(["seed", job.seed]);
  return h("table", { class: "kv" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, String(v))))));
}

function curves(events, prefix = "", cls) {
  return [
    lineChart({ title: "Loss", yLabel: "loss", series: metricSeries(events, "train_loss", "valid_loss", prefix, cls) }),
    lineChart({ title: "Token accuracy", yLabel: "accuracy", series: metricSeries(events, "train_mean_token_accuracy", "valid_mean_token_accuracy", prefix, cls) }),
  ];
}

export function jobPage({ main, args }) {
  const id = args[0];
  const head = h("div", { class: "title-row job-head" }, h("h1", {}, id));
  const err = h("p", { class: "error", role: "alert" });
  const actionErr = h("p", { class: "error", role: "alert" });
  const actions = h("div", { class: "actions" });
  const info = h("div", { class: "info" });
  const charts = h("div", { class: "charts", "aria-live": "off" });
  const ckpts = h("div");
  const events = h("ol", { class: "events" });
  main.append(h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), head, err, actions, actionErr, info,
    h("section", { "aria-labelledby": "curves-h" }, h("h2", { id: "curves-h" }, "Curves"), charts),
    h("section", { "aria-labelledby": "ckpt-h" }, h("h2", { id: "ckpt-h" }, "Checkpoints"), ckpts),
    h("section", { "aria-labelledby": "ev-h" }, h("h2", { id: "ev-h" }, "Events"), events));

  const known = new Map();
  let order = [];
  let job = null, stop = null;

  const act = (verb) => async () => {
    actionErr.textContent = "";
    try {
      job = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${verb}`, { method: "POST" });
      jobSig = JSON.stringify(job);
      drawJob();
    } catch (e) { actionErr.textContent = e.message; }
  };

  const download = async (fileId) => {
    actionErr.textContent = "";
    try {
      const blob = await apiBlob(`/v1/files/${encodeURIComponent(fileId)}/content`);
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: `${id}-results.csv` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) { actionErr.textContent = e.message; }
  };

  function drawJob() {
    clear(head).append(h("h1", {}, job.user_provided_suffix ? `${job.id} (${job.user_provided_suffix})` : job.id), statusBadge(job.status));
    clear(actions);
    if (!FINISHED.has(job.status)) actions.append(h("button", { type: "button", class: "danger", onclick: act("cancel") }, "Cancel"));
    if (["queued", "running", "validating_files"].includes(job.status)) actions.append(h("button", { type: "button", onclick: act("pause") }, "Pause"));
    if (job.status === "paused") actions.append(h("button", { type: "button", onclick: act("resume") }, "Resume"));
    for (const fid of job.result_files || []) actions.append(h("button", { type: "button", onclick: () => download(fid) }, "Download result CSV"));
    actions.append(h("a", { class: "button secondary", href: `#/compare?b=${encodeURIComponent(job.id)}` }, "Compare with another job"));
    if (job.fine_tuned_model) {
      actions.append(h("a", { class: "button", href: `#/playground?models=${encodeURIComponent(job.model)},${encodeURIComponent(job.fine_tuned_model)}` }, "Try in playground"));
    }
    const facts = [
      ["Model", job.model], ["Fine-tuned model", job.fine_tuned_model || "—"],
      ["Training file", job.training_file], ["Validation file", job.validation_file || "—"],
      ["Created", when(job.created_at)], ["Finished", job.finished_at ? when(job.finished_at) : "—"],
      ["Duration", jobDuration(job)], ["Trained tokens", job.trained_tokens ?? "—"],
    ];
    if (job.estimated_finish && !FINISHED.has(job.status)) facts.push(["Estimated finish", when(job.estimated_finish)]);
    clear(info).append(
      h("div", {}, h("h2", {}, "Job"), h("table", { class: "kv" }, h("tbody", {}, facts.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", { class: "mono", "data-k": k }, String(v))))))),
      h("div", {}, h("h2", {}, "Hyperparameters"), hpTable(job), h("p", { class: "hint" }, "“auto” values show as resolved once the trainer starts.")));
    if (job.error && job.error.message) info.append(h("div", { class: "error-box", role: "alert" }, h("strong", {}, `Failed (${job.error.code || "error"}): `), job.error.message));
  }

  function drawEvents() {
    const all = order;  // the API's order (newest first), which keeps same-second events in sequence
    clear(charts).append(...curves(all));
    clear(events);
    const msgs = all.filter((e) => e.type !== "metrics");
    for (const e of msgs.slice(0, 200)) {
      events.append(h("li", { class: `ev-${e.level}` }, h("time", {}, when(e.created_at)), " ", h("span", { class: "level" }, e.level), " ", e.message));
    }
    if (!msgs.length) events.append(h("li", { class: "muted" }, "No events yet."));
  }

  function drawCheckpoints(list) {
    clear(ckpts);
    if (!list.length) { ckpts.append(h("p", { class: "muted" }, "No checkpoints yet (one per epoch).")); return; }
    ckpts.append(h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Step", "Model", "Train loss", "Validation loss", ""].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, list.map((c) => h("tr", {},
        h("td", {}, c.step_number), h("td", { class: "mono" }, c.fine_tuned_model_checkpoint),
        h("td", {}, fmt(c.metrics.train_loss)), h("td", {}, fmt(c.metrics.valid_loss ?? c.metrics.full_valid_loss)),
        h("td", {}, h("a", { class: "button small", href: `#/playground?models=${encodeURIComponent(job.model)},${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "Try in playground"))))))));
  }

  let jobSig = "", ckptSig = "";
  stop = poller(async () => {
    job = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`);
    const fresh = await newEvents(id, known);
    for (const e of fresh) known.set(e.id, e);
    order = fresh.concat(order);
    // Redraw only what changed, so keyboard focus on a button survives the polling.
    const sig = JSON.stringify(job);
    if (sig !== jobSig) { jobSig = sig; drawJob(); }
    else { const d = info.querySelector("[data-k='Duration']"); if (d) d.textContent = jobDuration(job); }
    if (fresh.length || !charts.firstChild) drawEvents();
    const list = await listAll(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints`, 100);
    const csig = JSON.stringify(list);
    if (csig !== ckptSig) { ckptSig = csig; drawCheckpoints(list); }
    return !FINISHED.has(job.status);  // a finished job changes no more: stop polling
  }, err, JOB_POLL_MS);
  return () => stop();
}

// --- new job ------------------------------------------------------------------------------------------

function autoValue(raw) {
  const v = raw.trim();
  if (!v || v.toLowerCase() === "auto") return "auto";
  const n = Number(v);
  return Number.isFinite(n) ? n : v;  // a non-number goes as typed, so the API's message names it
}

export function newJobPage({ main, navigate }) {
  const model = h("input", { type: "text", list: "model-options", required: true, class: "wide", value: "gpt-4o-mini", autocomplete: "off" });
  const modelList = h("datalist", { id: "model-options" });
  const training = h("select", { required: true });
  const validation = h("select");
  const method = h("select", {}, h("option", { value: "supervised" }, "supervised"), h("option", { value: "dpo" }, "dpo"));
  const hp = {};
  for (const k of HP_KEYS) hp[k] = h("input", { type: "text", value: "auto", inputmode: "decimal", autocomplete: "off" });
  const suffix = h("input", { type: "text", maxlength: 64, autocomplete: "off" });
  const seed = h("input", { type: "text", inputmode: "numeric", autocomplete: "off" });
  const formErr = h("p", { class: "error", role: "alert" });
  const betaField = field("f-beta", "beta (DPO)", hp.beta, "auto, or > 0 and ≤ 2");
  betaField.hidden = true;
  method.addEventListener("change", () => { betaField.hidden = method.value !== "dpo"; });
  const submit = h("button", { type: "submit" }, "Create job");
  const form = h("form", { class: "card", novalidate: true },
    field("f-model", "Base model", model, "A base model, an alias (gpt-4o-mini …) or a model directory"), modelList,
    field("f-training_file", "Training file", training),
    field("f-validation_file", "Validation file (optional)", validation),
    field("f-method", "Method", method),
    h("fieldset", {}, h("legend", {}, "Hyperparameters"),
      h("div", { class: "grid3" },
        field("f-n_epochs", "Epochs", hp.n_epochs, "auto, or 1–50"),
        field("f-batch_size", "Batch size", hp.batch_size, "auto, or 1–256"),
        field("f-learning_rate_multiplier", "Learning rate multiplier", hp.learning_rate_multiplier, "auto, or > 0 and ≤ 10")),
      betaField),
    field("f-suffix", "Suffix (optional)", suffix, "Up to 64 of A–Z a–z 0–9 . _ -; becomes part of the model name"),
    field("f-seed", "Seed (optional)", seed),
    formErr, submit);
  main.append(h("h1", {}, "New fine-tuning job"), form);

  const FIELDS = { model: "f-model", training_file: "f-training_file", validation_file: "f-validation_file",
    method: "f-method", type: "f-method", n_epochs: "f-n_epochs", batch_size: "f-batch_size",
    learning_rate_multiplier: "f-learning_rate_multiplier", beta: "f-beta", suffix: "f-suffix", seed: "f-seed",
    hyperparameters: "f-n_epochs" };

  (async () => {
    try {
      const [models, files] = await Promise.all([api("/v1/models"), listAll("/v1/files?purpose=fine-tune", 10000).catch(() => [])]);
      for (const m of models.data) if (!m.id.startsWith("ft:")) modelList.append(h("option", { value: m.id }));
      const usable = files.filter((f) => f.status === "processed");
      if (!usable.length) training.append(h("option", { value: "" }, "— upload a file first —"));
      for (const f of usable) training.append(h("option", { value: f.id }, `${f.filename} (${f.id})`));
      validation.append(h("option", { value: "" }, "none"));
      for (const f of usable) validation.append(h("option", { value: f.id }, `${f.filename} (${f.id})`));
    } catch (e) { formErr.textContent = e.message; }
  })();

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    formErr.textContent = "";
    const hps = {};
    for (const k of ["n_epochs", "batch_size", "learning_rate_multiplier"]) hps[k] = autoValue(hp[k].value);
    if (method.value === "dpo") hps.beta = autoValue(hp.beta.value);
    const body = { model: model.value.trim(), training_file: training.value,
      method: { type: method.value, [method.value]: { hyperparameters: hps } } };
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (seed.value.trim()) body.seed = /^-?\d+$/.test(seed.value.trim()) ? Number(seed.value.trim()) : seed.value.trim();
    submit.disabled = true;
    try {
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", body });
      navigate(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (e) {
      showError(form, e, FIELDS, formErr);
    } finally {
      submit.disabled = false;
    }
  });
}

// --- compare ------------------------------------------------------------------------------------------

export function comparePage({ main, query, navigate }) {
  const a = h("select"), b = h("select");
  const err = h("p", { class: "error", role: "alert" });
  const out = h("div");
  main.append(h("h1", {}, "Compare two jobs"),
    h("form", { class: "toolbar", novalidate: true }, field("cmp-a", "Job A", a), field("cmp-b", "Job B", b)), err, out);
  const go = () => navigate(`#/compare?a=${encodeURIComponent(a.value)}&b=${encodeURIComponent(b.value)}`);
  a.addEventListener("change", go);
  b.addEventListener("change", go);

  let filled = false;
  const known = [new Map(), new Map()];
  return poller(async () => {
    if (!filled) {
      const jobs = await listAll("/v1/fine_tuning/jobs", 100);
      if (jobs.length < 1) { clear(out).append(h("p", { class: "muted" }, "No jobs to compare yet.")); return false; }
      for (const sel of [a, b]) for (const j of jobs) sel.append(h("option", { value: j.id }, `${j.id}${j.user_provided_suffix ? " (" + j.user_provided_suffix + ")" : ""} — ${j.status}`));
      a.value = query.get("a") || jobs[Math.min(1, jobs.length - 1)].id;
      b.value = query.get("b") || jobs[0].id;
      if (b.value === a.value && !query.get("a") && jobs.length > 1) a.value = jobs.find((j) => j.id !== b.value).id;
      filled = true;
    }
    const ids = [a.value, b.value];
    const [ja, jb] = await Promise.all(ids.map((id) => api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`)));
    const fresh = await Promise.all(ids.map((id, i) => newEvents(id, known[i])));
    fresh.forEach((list, i) => { for (const e of list) known[i].set(e.id, e); });
    const [ea, eb] = known.map((m) => [...m.values()]);
    clear(out);
    {
      const overlay = (trainKey, validKey) => [
        ...metricSeries(ea, trainKey, validKey, "A ", ["s0", "s0"]),
        ...metricSeries(eb, trainKey, validKey, "B ", ["s2", "s2"])];
      out.append(h("div", { class: "charts" },
        lineChart({ title: "Loss (A blue, B orange; validation dashed)", yLabel: "loss", series: overlay("train_loss", "valid_loss") }),
        lineChart({ title: "Token accuracy", yLabel: "accuracy", series: overlay("train_mean_token_accuracy", "valid_mean_token_accuracy") })));
      const last = (events, key) => {
        const s = metricSeries(events, key, key)[0].points;
        return s.length ? fmt(s[s.length - 1][1]) : "";
      };
      const row = (label, f) => [label, f(ja, ea), f(jb, eb)];
      const rows = [
        row("status", (j) => j.status), row("model", (j) => j.model),
        row("method", (j) => methodOf(j).type),
        ...HP_KEYS.map((k) => row(k, (j) => (k in methodOf(j).hp ? fmt(methodOf(j).hp[k]) : ""))),
        row("seed", (j) => j.seed), row("suffix", (j) => j.user_provided_suffix || ""),
        row("training file", (j) => j.training_file), row("validation file", (j) => j.validation_file || ""),
        row("trained tokens", (j) => j.trained_tokens ?? ""), row("duration", (j) => jobDuration(j)),
        row("last train loss", (j, e) => last(e, "train_loss")), row("last validation loss", (j, e) => last(e, "valid_loss")),
        row("fine-tuned model", (j) => j.fine_tuned_model || ""),
      ];
      out.append(h("div", { class: "table-wrap" }, h("table", { class: "compare" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), h("th", { scope: "col" }, `A: ${ja.id}`), h("th", { scope: "col" }, `B: ${jb.id}`))),
        h("tbody", {}, rows.filter(([, x, y]) => String(x) !== "" || String(y) !== "").map(([k, x, y]) => h("tr", { class: String(x) !== String(y) ? "differs" : "" },
          h("th", { scope: "row" }, k), h("td", { class: "mono" }, String(x)), h("td", { class: "mono" }, String(y))))))),
      h("p", { class: "hint" }, "Rows that differ are highlighted."));
    }
    return !(FINISHED.has(ja.status) && FINISHED.has(jb.status));  // follow running jobs live
  }, err);
}
