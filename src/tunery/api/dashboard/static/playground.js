// Playground: the same system and user message to two to four models or checkpoints, answers streamed
// side by side (fetch + the SSE body read as it arrives).

import { api, clear, clearErrors, field, h, showError, streamChat } from "./api.js";

const MIN = 2, MAX = 4;

export function playgroundPage({ main, query }) {
  const preset = (query.get("models") || "").split(",").map((s) => s.trim()).filter(Boolean).slice(0, MAX);
  const names = preset.length >= MIN ? preset : [...preset, "smollm2-135m-instruct", "gpt-4o-mini"].slice(0, MIN);
  const datalist = h("datalist", { id: "pg-models" });
  const modelsBox = h("div", { class: "pg-models" });
  const system = h("textarea", { rows: 2 });
  const user = h("textarea", { rows: 3, required: true });
  const temperature = h("input", { type: "number", min: 0, max: 2, step: 0.1, value: "0.7" });
  const maxTokens = h("input", { type: "number", min: 1, step: 1, value: "128" });
  const stop = h("input", { type: "text", autocomplete: "off" });
  const formErr = h("p", { class: "error", role: "alert" });
  const send = h("button", { type: "submit" }, "Send");
  const halt = h("button", { type: "button", disabled: true }, "Stop");
  const add = h("button", { type: "button", class: "small" }, "Add a model");
  const answers = h("div", { class: "pg-answers", "aria-live": "polite" });
  const form = h("form", { class: "card", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Models (2–4)"), modelsBox, add), datalist,
    field("pg-system", "System message", system),
    field("pg-user", "User message", user, "Ctrl+Enter sends"),
    h("div", { class: "grid3" },
      field("pg-temperature", "Temperature", temperature, "0 = always the most likely token"),
      field("pg-max_tokens", "Max tokens", maxTokens),
      field("pg-stop", "Stop sequences", stop, "Up to 4, separated by |")),
    formErr, h("div", { class: "actions" }, send, halt));
  main.append(h("h1", {}, "Playground"), form, answers);

  const rows = [];
  function renumber() {
    rows.forEach((r, i) => {
      r.label.textContent = `Model ${i + 1}`;
      r.remove.hidden = rows.length <= MIN;
    });
    add.hidden = rows.length >= MAX;
  }
  function addRow(name) {
    const input = h("input", { type: "text", list: "pg-models", value: name || "", autocomplete: "off", class: "wide" });
    const idx = rows.length;
    const id = `pg-model-${Date.now().toString(36)}-${idx}`;
    const wrap = field(id, "Model", input);
    const remove = h("button", { type: "button", class: "small" }, "Remove");
    const row = { input, wrap, label: wrap.querySelector("label"), remove, id };
    remove.addEventListener("click", () => {
      rows.splice(rows.indexOf(row), 1);
      wrap.remove();
      renumber();
    });
    wrap.append(remove);
    modelsBox.append(wrap);
    rows.push(row);
    renumber();
    return row;
  }
  names.forEach(addRow);
  add.addEventListener("click", () => { addRow("").input.focus(); });
  user.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit(); });

  api("/v1/models").then((m) => {
    for (const x of m.data) datalist.append(h("option", { value: x.id }));
    for (const n of preset) if (!m.data.some((x) => x.id === n)) datalist.append(h("option", { value: n }));
    // With nothing chosen, put a fine-tuned model of yours beside the base model.
    const tuned = m.data.filter((x) => x.id.startsWith("ft:")).sort((x, y) => y.created - x.created)[0];
    if (!preset.length && tuned && rows[1] && rows[1].input.value === "gpt-4o-mini") rows[1].input.value = tuned.id;
  }).catch(() => { /* the datalist is a convenience; typing a name still works */ });

  let controller = null;
  halt.addEventListener("click", () => { if (controller) controller.abort(); });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    formErr.textContent = "";
    if (!user.value.trim()) { form.querySelector("#pg-user-error").textContent = "Write a user message."; user.focus(); return; }
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: user.value });
    const params = { messages };
    if (temperature.value !== "") params.temperature = Number(temperature.value);
    if (maxTokens.value !== "") params.max_tokens = Number(maxTokens.value);
    const stops = stop.value.split("|").filter((s) => s.length);
    if (stops.length) params.stop = stops;
    const FIELDS = { temperature: "pg-temperature", max_tokens: "pg-max_tokens", stop: "pg-stop", messages: "pg-user" };

    controller = new AbortController();
    send.disabled = true;
    halt.disabled = false;
    clear(answers);
    const shown = new Set();
    const runs = rows.map((row, i) => {
      const name = row.input.value.trim();
      const text = h("div", { class: "pg-text" });
      const meta = h("p", { class: "muted pg-meta" }, "waiting…");
      const col = h("section", { class: "pg-answer card", "data-state": "waiting", "data-chunks": "0", "aria-label": `Answer of ${name || "model " + (i + 1)}` },
        h("h2", { class: "mono" }, name || `(model ${i + 1})`), text, meta);
      answers.append(col);
      return (async () => {
        if (!name) { row.wrap.querySelector(".field-error").textContent = "Name a model or remove this row."; col.dataset.state = "error"; meta.textContent = "no model"; return; }
        const t0 = performance.now();
        let chunks = 0, first = null, finish = "";
        try {
          for await (const chunk of streamChat({ model: name, ...params }, controller.signal)) {
            const choice = (chunk.choices || [])[0];
            if (!choice) continue;
            const piece = (choice.delta && choice.delta.content) || "";
            if (piece) {
              if (first === null) first = performance.now();
              text.append(piece);
              chunks += 1;
              col.dataset.chunks = String(chunks);
              col.dataset.state = "streaming";
              meta.textContent = `${chunks} chunks…`;
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
          const secs = (performance.now() - t0) / 1000;
          col.dataset.state = "done";
          meta.textContent = `${chunks} chunks in ${secs.toFixed(1)} s` + (first !== null ? ` (first after ${((first - t0) / 1000).toFixed(1)} s)` : "")
            + (finish ? `; finish: ${finish}` : "");
        } catch (e) {
          if (e.name === "AbortError") { col.dataset.state = "stopped"; meta.textContent = "stopped"; return; }
          col.dataset.state = "error";
          meta.textContent = "";
          col.append(h("p", { class: "error", role: "alert" }, e.message));
          // Errors about the request itself go next to their field, once; a bad model name next to its row.
          if (e.param === "model") row.wrap.querySelector(".field-error").textContent = e.message;
          else if (e.param && !shown.has(e.param)) { shown.add(e.param); showError(form, e, FIELDS, formErr); }
        }
      })();
    });
    await Promise.allSettled(runs);
    send.disabled = false;
    halt.disabled = true;
    controller = null;
  });
}
