// Files: upload (the validation report appears at once, every problem with its line numbers), list, delete.

import { api, bytes, clear, clearErrors, field, h, listAll, showError, when } from "./api.js";

const PURPOSES = ["fine-tune", "assistants", "batch", "vision", "user_data", "evals"];

function problemRows(list) {
  return list.map((p) => h("tr", { class: `sev-${p.severity}` },
    h("td", {}, h("span", { class: `badge sev-${p.severity}` }, p.severity)),
    h("td", {}, p.file === "validation" ? "validation file: " : "", p.message,
      p.details && p.details.filter(Boolean).length ? h("div", { class: "muted" }, p.details.filter(Boolean).slice(0, 3).join("; ")) : null),
    h("td", { class: "lines" }, p.lines && p.lines.filter((n) => n > 0).length
      ? `${p.lines.filter((n) => n > 0).join(", ")}${p.count > p.lines.length ? ` … (${p.count} in all)` : ""}` : "whole file"),
    h("td", {}, p.hint)));
}

// The validation report of one file, from tunery's read-only /tunery/v1/files/{id}/validation.
export async function reportView(fileId) {
  const box = h("section", { class: "report card", "aria-label": `Validation report of ${fileId}`, "data-file": fileId });
  const v = await api(`/tunery/v1/files/${encodeURIComponent(fileId)}/validation`);
  const r = v.report;
  box.append(h("h2", {}, `Validation report: ${fileId}`));
  if (!r) {
    box.append(h("p", {}, v.status === "error" ? v.status_details : "This file is not validated (only purpose fine-tune files are)."));
    return box;
  }
  box.append(h("p", { class: r.ok ? "ok" : "error" }, r.ok ? "✓ " : "✗ ",
    `${r.ok ? "Valid" : "Not usable for fine-tuning"}: ${r.n_examples} valid ${r.format || "unknown-format"} examples in ${r.n_lines} lines; `
    + `${r.n_errors} error${r.n_errors === 1 ? "" : "s"}, ${r.n_warnings} warning${r.n_warnings === 1 ? "" : "s"}.`));
  const t = r.token_stats;
  if (t) box.append(h("p", { class: "muted" }, `Tokens per example: min ${t.min}, mean ${typeof t.mean === "number" ? t.mean.toFixed(1) : t.mean}, max ${t.max}`
    + (t.total !== undefined ? `; ${t.total} in all` : "") + (r.model ? ` (${r.model} tokenizer)` : "")));
  const problems = [...(r.errors || []), ...(r.warnings || [])];
  if (problems.length) {
    box.append(h("div", { class: "table-wrap" }, h("table", { class: "problems" },
      h("thead", {}, h("tr", {}, ["", "Problem", "Lines", "How to fix"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, problemRows(problems)))));
  }
  return box;
}

export function filesPage({ main }) {
  const fileInput = h("input", { type: "file", accept: ".jsonl,.json,.txt,application/jsonl,application/json", required: true });
  const purpose = h("select", {}, PURPOSES.map((p) => h("option", { value: p }, p)));
  const formErr = h("p", { class: "error", role: "alert" });
  const submit = h("button", { type: "submit" }, "Upload");
  const status = h("p", { class: "muted", "aria-live": "polite" });
  const form = h("form", { class: "card upload", novalidate: true },
    h("h2", {}, "Upload a file"),
    h("div", { class: "grid2" }, field("up-file", "JSONL file", fileInput, "Chat {\"messages\": …}, prompt/completion, or DPO pairs; validated at once"),
      field("up-purpose", "Purpose", purpose)),
    formErr, submit, status);
  const report = h("div", { id: "report-slot" });
  const body = h("tbody");
  const listErr = h("p", { class: "error", role: "alert" });
  main.append(h("h1", {}, "Files"), form, report,
    h("h2", {}, "Your files"), listErr,
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["File", "Name", "Purpose", "Size", "Created", "Status", ""].map((c) => h("th", { scope: "col" }, c)))),
      body)));

  const showReport = async (id) => {
    clear(report);
    try {
      const view = await reportView(id);
      report.append(view);
      view.setAttribute("tabindex", "-1");
      view.focus();
    } catch (e) { report.append(h("p", { class: "error", role: "alert" }, e.message)); }
  };

  const refresh = async () => {
    try {
      const files = await listAll("/v1/files", 10000);
      clear(body);
      for (const f of files) {
        const del = h("button", { type: "button", class: "small danger" }, "Delete");
        del.setAttribute("aria-label", `Delete ${f.filename} (${f.id})`);
        del.addEventListener("click", async () => {
          if (!window.confirm(`Delete ${f.filename} (${f.id})?`)) return;
          try {
            await api(`/v1/files/${encodeURIComponent(f.id)}`, { method: "DELETE" });
            if (report.querySelector(`[data-file="${CSS.escape(f.id)}"]`)) clear(report);
            refresh();
          } catch (e) { listErr.textContent = e.message; }
        });
        const rep = f.purpose === "fine-tune" ? h("button", { type: "button", class: "small", onclick: () => showReport(f.id) }, "Report") : null;
        if (rep) rep.setAttribute("aria-label", `Validation report of ${f.filename} (${f.id})`);
        body.append(h("tr", { "data-file": f.id },
          h("td", { class: "mono" }, f.id), h("td", {}, f.filename), h("td", {}, f.purpose), h("td", {}, bytes(f.bytes)),
          h("td", {}, when(f.created_at)), h("td", {}, h("span", { class: `badge fs-${f.status}` }, f.status)),
          h("td", { class: "row-actions" }, rep, del)));
      }
      if (!files.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No files yet.")));
      listErr.textContent = "";
    } catch (e) { if (e.status !== 401) listErr.textContent = e.message; }
  };

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    formErr.textContent = "";
    const file = fileInput.files[0];
    if (!file) { form.querySelector("#up-file-error").textContent = "Choose a file to upload."; fileInput.focus(); return; }
    const data = new FormData();
    data.append("purpose", purpose.value);
    data.append("file", file, file.name);
    submit.disabled = true;
    status.textContent = `Uploading and validating ${file.name}…`;
    try {
      const f = await api("/v1/files", { method: "POST", form: data });
      status.textContent = `Uploaded ${f.filename} as ${f.id}: ${f.status}.`;
      form.reset();
      await refresh();
      await showReport(f.id);
    } catch (e) {
      status.textContent = "";
      showError(form, e, { file: "up-file", purpose: "up-purpose" }, formErr);
    } finally {
      submit.disabled = false;
    }
  });
  refresh();
}
