// Models: base models and aliases (what each resolves to), your fine-tuned models (delete), playground links.

import { api, clear, h, when } from "./api.js";

export function modelsPage({ main }) {
  const err = h("p", { class: "error", role: "alert" });
  const ft = h("tbody"), base = h("tbody");
  const head = (cols) => h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c))));
  main.append(h("h1", {}, "Models"), err,
    h("h2", {}, "Fine-tuned models"),
    h("div", { class: "table-wrap" }, h("table", { id: "ft-models" }, head(["Model", "Owner", "Created", ""]), ft)),
    h("h2", {}, "Base models and aliases"),
    h("div", { class: "table-wrap" }, h("table", { id: "base-models" }, head(["Name", "Kind", "Resolves to", "Context", "Chat template", "Installed", ""]), base)));

  const tryLink = (id) => h("a", { class: "button small", href: `#/playground?models=${encodeURIComponent(id)}` }, "Playground");

  const refresh = async () => {
    try {
      const [listed, registry] = await Promise.all([api("/v1/models"), api("/tunery/v1/models")]);
      const known = new Set(registry.data.map((r) => r.name));
      clear(ft);
      for (const m of listed.data.filter((x) => !known.has(x.id) && x.owned_by !== "tunery")) {
        const del = h("button", { type: "button", class: "small danger" }, "Delete");
        del.setAttribute("aria-label", `Delete ${m.id}`);
        del.addEventListener("click", async () => {
          if (!window.confirm(`Delete ${m.id}? It stops answering at once.`)) return;
          try {
            await api(`/v1/models/${encodeURIComponent(m.id)}`, { method: "DELETE" });
            refresh();
          } catch (e) { err.textContent = e.message; }
        });
        ft.append(h("tr", { "data-model": m.id }, h("td", { class: "mono" }, m.id), h("td", {}, m.owned_by),
          h("td", {}, when(m.created)), h("td", { class: "row-actions" }, tryLink(m.id), del)));
      }
      if (!ft.children.length) ft.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No fine-tuned models yet.")));
      clear(base);
      for (const r of registry.data) {
        base.append(h("tr", { "data-model": r.name }, h("td", { class: "mono" }, r.name), h("td", {}, r.kind === "alias" ? "alias" : "base"),
          h("td", { class: "mono" }, r.kind === "alias" ? r.resolves_to : ""), h("td", {}, r.context_length ?? ""),
          h("td", {}, r.chat === null || r.chat === undefined ? "" : r.chat ? "yes" : "no"),
          h("td", {}, r.available ? "yes" : "no"), h("td", {}, tryLink(r.name))));
      }
      err.textContent = "";
    } catch (e) { if (e.status !== 401) err.textContent = e.message; }
  };
  refresh();
}
