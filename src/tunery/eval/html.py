"""A self-contained HTML page for an evaluation report: inline CSS and SVG, no scripts, no CDN."""

from __future__ import annotations

import difflib
import html
import math
import re
from pathlib import Path

from tunery.eval import metrics as M
from tunery.eval.report import LABELS, columns, fmt, job_rows, write_json
from tunery.eval.score import QUALITY

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"]
KIND_TEXT = {
    "verbatim": "Questions from the training file, asked exactly as trained.",
    "variation": "Held-out or rephrased questions (the validation file): did the model generalise?",
    "off-topic": "Questions outside the fine-tune: does the model still answer sensibly, or decline when it should?",
}
METRIC_HELP = {
    "exact_match": "normalised answer equals the reference",
    "key_fact_recall": "share of key facts stated in the answer",
    "token_f1": "word overlap with the reference (SQuAD F1)",
    "chrf": "character n-gram F-score (sacrebleu chrF)",
    "semantic_similarity": "cosine similarity of all-MiniLM-L6-v2 embeddings",
    "decline_rate": "share of answers that refuse or say they don't know",
    "answered_when_should_decline": "¹ share of should-decline cases the model answered anyway (lower is better)",
}

e = html.escape

CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f9fafb;--card:#fff;--good:#dcfce7;--bad:#fee2e2}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;color:var(--fg);background:var(--bg)}
header{background:#111827;color:#f9fafb;padding:22px 32px}
header h1{margin:0 0 4px;font-size:22px;font-weight:650}
header .meta{color:#9ca3af;font-size:13px}
main{max-width:1280px;margin:0 auto;padding:8px 32px 48px}
h2{font-size:18px;margin:32px 0 8px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:20px 0 6px}
p.note{color:var(--muted);margin:4px 0 12px}
.models{display:flex;flex-wrap:wrap;gap:8px 18px;margin-top:10px}
.models span{display:inline-flex;align-items:center;gap:6px;font-size:13px}
.dot{width:10px;height:10px;border-radius:50%;display:inline-block;flex:none}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);font-size:13px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f3f4f6;font-weight:600;color:#374151}
td:first-child,th:first-child{text-align:left;white-space:normal}
tr:last-child td{border-bottom:none}
table.jobs td.wrap{white-space:normal;word-break:break-all;text-align:left}
table.jobs th{text-align:left}
table.jobs td:first-child{color:#374151;font-weight:600;width:160px}
table.jobs tr.differs td{background:#fffbeb}table.jobs tr.differs td:first-child{box-shadow:inset 3px 0 #f59e0b}
td.best{background:var(--good);font-weight:650}
td.err{color:#b91c1c;font-weight:600}
.delta{color:var(--muted);font-size:11px;margin-left:4px}
.delta.up{color:#15803d}.delta.down{color:#b91c1c}
.scroll{overflow-x:auto}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:16px}
.chart{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px}
.chart svg{width:100%;height:auto;display:block}
details.kind{margin:18px 0}
details.kind>summary{cursor:pointer;font-size:16px;font-weight:650;padding:6px 0}
.case{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:12px 0;overflow:hidden}
.case-head{padding:10px 14px;border-bottom:1px solid var(--line);background:#fcfcfd}
.case-head .id{color:var(--muted);font-size:12px;font-family:ui-monospace,monospace}
.badge{display:inline-block;font-size:11px;padding:1px 7px;border-radius:9px;margin-left:6px;background:#e5e7eb;color:#374151}
.badge.verbatim{background:#dbeafe;color:#1e40af}.badge.variation{background:#ede9fe;color:#5b21b6}
.badge.off-topic{background:#fef3c7;color:#92400e}.badge.warn{background:var(--bad);color:#991b1b}
.q{font-weight:600;margin:4px 0;white-space:pre-wrap}
.sys{color:var(--muted);font-size:12px;white-space:pre-wrap}
.ref{margin-top:6px;font-size:13px;white-space:pre-wrap}
.ref b{color:var(--muted);font-weight:600}
.facts{margin-top:6px}
.fact{display:inline-block;font-size:12px;border:1px solid var(--line);border-radius:4px;padding:0 6px;margin:2px 4px 2px 0;background:#f9fafb}
.fact.hit{background:var(--good);border-color:#86efac}.fact.miss{background:var(--bad);border-color:#fca5a5;text-decoration:line-through}
.answers{display:grid;grid-template-columns:repeat(var(--n),minmax(240px,1fr));overflow-x:auto}
.answer{padding:10px 14px;border-right:1px solid var(--line);min-width:0}
.answer:last-child{border-right:none}
.answer .who{font-size:12px;font-weight:600;display:flex;align-items:center;gap:6px;margin-bottom:4px;word-break:break-all}
.answer .text{white-space:pre-wrap;word-wrap:break-word;font-size:13.5px}
.answer .text mark{background:#fef08a;border-radius:2px;padding:0 1px}
.answer .error{color:#b91c1c;font-size:12.5px;white-space:pre-wrap}
.answer .m{margin-top:8px;font-size:11.5px;color:var(--muted);display:flex;flex-wrap:wrap;gap:4px 10px}
.answer .m .declined{color:#92400e;font-weight:600}
footer{color:var(--muted);font-size:12px;margin-top:40px}
code{font-family:ui-monospace,monospace;font-size:12px}
"""


# ---------------------------------------------------------------- charts
def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 0.5:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _tick_label(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.0e}"


def line_chart(series: list[dict], *, title: str, x_label: str = "step", y_label: str = "",
               width: int = 600, height: int = 300) -> str:
    """An SVG line chart. series: [{label, color, dash (bool), points [[x, y], ...]}]."""
    pts = [p for s in series for p in s["points"]]
    if not pts:
        return ""
    ml, mr, mt, mb = 56, 16, 34, 64
    pw, ph = width - ml - mr, height - mt - mb
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xt = _nice_ticks(min(0, min(xs)), max(xs))
    yt = _nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def X(x):
        return ml + (x - x0) / ((x1 - x0) or 1) * pw

    def Y(y):
        return mt + ph - (y - y0) / ((y1 - y0) or 1) * ph

    out = [f'<svg viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'aria-label="{e(title)}" font-family="system-ui,sans-serif">',
           f'<text x="{ml}" y="20" font-size="14" font-weight="600" fill="#111827">{e(title)}</text>']
    for t in yt:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#eef0f3"/>'
                   f'<text x="{ml - 6}" y="{Y(t) + 4:.1f}" font-size="11" fill="#6b7280" '
                   f'text-anchor="end">{_tick_label(t)}</text>')
    for t in xt:
        out.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" stroke="#9ca3af"/>'
                   f'<text x="{X(t):.1f}" y="{mt + ph + 17}" font-size="11" fill="#6b7280" '
                   f'text-anchor="middle">{_tick_label(t)}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="#9ca3af"/>')
    out.append(f'<text x="{ml + pw / 2}" y="{mt + ph + 32}" font-size="11" fill="#6b7280" '
               f'text-anchor="middle">{e(x_label)}</text>')
    if y_label:
        out.append(f'<text transform="translate(14 {mt + ph / 2}) rotate(-90)" font-size="11" '
                   f'fill="#6b7280" text-anchor="middle">{e(y_label)}</text>')
    for s in series:
        if not s["points"]:
            continue
        dash = ' stroke-dasharray="6 4"' if s.get("dash") else ""
        path = " ".join(f"{'M' if i == 0 else 'L'}{X(x):.1f},{Y(y):.1f}" for i, (x, y) in enumerate(s["points"]))
        out.append(f'<path d="{path}" fill="none" stroke="{s["color"]}" stroke-width="2"{dash} '
                   f'stroke-linejoin="round" stroke-linecap="round" opacity="{s.get("opacity", 1)}"/>')
        if len(s["points"]) <= 30:
            for x, y in s["points"]:
                out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.6" fill="{s["color"]}"/>')
    # Legend under the plot, wrapping when it gets long.
    lx, ly = ml, height - 14
    for s in series:
        w = 34 + 6.4 * len(s["label"])
        if lx + w > width - mr and lx > ml:
            lx, ly = ml, ly + 15
        dash = ' stroke-dasharray="6 4"' if s.get("dash") else ""
        out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly - 4}" y2="{ly - 4}" stroke="{s["color"]}" '
                   f'stroke-width="2"{dash}/><text x="{lx + 27}" y="{ly}" font-size="11" '
                   f'fill="#374151">{e(s["label"])}</text>')
        lx += w
    out.append("</svg>")
    return "".join(out)


def bar_chart(groups: list[str], bars: list[dict], *, title: str, width: int = 600, height: int = 260) -> str:
    """Grouped bars on a 0–1 scale. bars: [{label, color, values [per group or None]}]."""
    keep = [i for i in range(len(groups)) if any(b["values"][i] is not None for b in bars)]
    groups = [groups[i] for i in keep]
    bars = [{**b, "values": [b["values"][i] for i in keep]} for b in bars]
    if not groups or not bars:
        return ""
    legend_rows, lx = 1, 0.0
    for b in bars:
        w = 26 + 6.2 * len(b["label"])
        if lx + w > width - 52 and lx > 0:
            legend_rows, lx = legend_rows + 1, 0.0
        lx += w
    height += 15 * (legend_rows - 1)
    ml, mr, mt, mb = 40, 12, 34, 32 + 15 * legend_rows
    pw, ph = width - ml - mr, height - mt - mb
    gw = pw / len(groups)
    bw = min(34, (gw - 14) / len(bars))
    out = [f'<svg viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'aria-label="{e(title)}" font-family="system-ui,sans-serif">',
           f'<text x="{ml}" y="20" font-size="14" font-weight="600" fill="#111827">{e(title)}</text>']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        y = mt + ph - t * ph
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f3"/>'
                   f'<text x="{ml - 6}" y="{y + 4:.1f}" font-size="11" fill="#6b7280" text-anchor="end">{t:g}</text>')
    for gi, g in enumerate(groups):
        gx = ml + gi * gw + (gw - bw * len(bars)) / 2
        for bi, b in enumerate(bars):
            v = b["values"][gi]
            if v is None:
                continue
            h = max(0.0, min(1.0, v)) * ph
            x = gx + bi * bw
            out.append(f'<rect x="{x + 1:.1f}" y="{mt + ph - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                       f'fill="{b["color"]}" rx="2"><title>{e(b["label"])}: {v:.2f}</title></rect>')
            if bw >= 22:
                out.append(f'<text x="{x + bw / 2:.1f}" y="{mt + ph - h - 4:.1f}" font-size="10" '
                           f'fill="#374151" text-anchor="middle">{v:.2f}</text>')
        out.append(f'<text x="{ml + gi * gw + gw / 2:.1f}" y="{mt + ph + 17}" font-size="11.5" fill="#374151" '
                   f'text-anchor="middle">{e(g)}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="#9ca3af"/>')
    lx, ly = ml, mt + ph + 36
    for b in bars:
        w = 26 + 6.2 * len(b["label"])
        if lx + w > width - mr and lx > ml:
            lx, ly = ml, ly + 15
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{b["color"]}" rx="2"/>'
                   f'<text x="{lx + 14}" y="{ly}" font-size="11" fill="#374151">{e(b["label"])}</text>')
        lx += w
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------- answers and diffs
_SPLIT = re.compile(r"(\s+)")


def diff_marks(text: str, baseline: str | None) -> str:
    """Escaped text with the words that differ from the baseline answer wrapped in <mark>."""
    if baseline is None or text == baseline:
        return e(text)
    parts = _SPLIT.split(text)
    word_idx = [i for i, p in enumerate(parts) if p and not p.isspace()]
    base = [M.normalize(w) or w for w in baseline.split()]
    mine = [M.normalize(parts[i]) or parts[i] for i in word_idx]
    changed: set[int] = set()
    for op, _, _, j1, j2 in difflib.SequenceMatcher(None, base, mine, autojunk=False).get_opcodes():
        if op in ("replace", "insert"):
            changed.update(word_idx[k] for k in range(j1, j2))
    return "".join(f"<mark>{e(p)}</mark>" if i in changed else e(p) for i, p in enumerate(parts))


def _colors(models: list[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}


def _label(report: dict, m: str) -> str:
    return (report.get("model_labels") or {}).get(m, m)


def _metric_table(report: dict, kind: str, colors: dict) -> str:
    models = report["models"]
    groups = [report["summary"][m][kind] for m in models]
    cols = columns(kind, groups)
    best = {}
    for c in cols:
        vals = [g.get(c) for g in groups if g.get(c) is not None]
        # Highlight a best value only where the models differ (a column of equal zeros has no winner).
        if len(set(vals)) > 1 and c in (*QUALITY, "latency_s", "answered_when_should_decline"):
            best[c] = min(vals) if c in ("latency_s", "answered_when_should_decline") else max(vals)
    head = "".join(f'<th title="{e(METRIC_HELP.get(c, ""))}">{e(LABELS.get(c, c))}</th>' for c in cols)
    rows = []
    for i, (m, g) in enumerate(zip(models, groups)):
        cells = []
        for c in cols:
            v = g.get(c)
            cls = "best" if c in best and v == best[c] else ("err" if c == "errors" and v else "")
            delta = ""
            base = groups[0].get(c)
            if i > 0 and c in QUALITY and v is not None and base is not None and abs(v - base) >= 0.005:
                delta = (f'<span class="delta {"up" if v > base else "down"}">'
                         f'{"+" if v > base else "−"}{abs(v - base):.2f}</span>')
            cells.append(f'<td class="{cls}">{fmt(c, v)}{delta}</td>')
        rows.append(f'<tr><td><span class="dot" style="background:{colors[m]}"></span> '
                    f'{e(_label(report, m))}</td>{"".join(cells)}</tr>')
    return f'<div class="scroll"><table><tr><th>model</th>{head}</tr>{"".join(rows)}</table></div>'


def _case_card(report: dict, case: dict, results: dict, colors: dict) -> str:
    models = report["models"]
    badges = f'<span class="badge {e(case["kind"])}">{e(case["kind"])}</span>'
    if case.get("should_decline"):
        badges += '<span class="badge warn">should decline</span>'
    system = " ".join(m["content"] for m in case["messages"] if m["role"] == "system" and isinstance(m["content"], str))
    question = next((m["content"] for m in reversed(case["messages"]) if m["role"] == "user"), "")
    if not isinstance(question, str):
        question = str(question)
    turns = sum(1 for m in case["messages"] if m["role"] in ("user", "assistant"))
    head = [f'<div class="case-head"><span class="id">{e(case["id"])}</span>{badges}']
    if system:
        head.append(f'<div class="sys">system: {e(system)}</div>')
    if turns > 1:
        head.append(f'<div class="sys">(after {turns - 1} earlier turn{"s" if turns > 2 else ""})</div>')
    head.append(f'<div class="q">{e(question)}</div>')
    if case.get("expected") is not None:
        head.append(f'<div class="ref"><b>expected:</b> {e(case["expected"])}</div>')
    if case.get("key_facts"):
        head.append('<div class="facts">' + "".join(
            f'<span class="fact">{e(" / ".join(f))}</span>' for f in case["key_facts"]) + "</div>")
    head.append("</div>")
    baseline = results.get(models[0], {}).get("text")
    cols = []
    for mi, m in enumerate(models):
        r = results.get(m)
        who = f'<div class="who"><span class="dot" style="background:{colors[m]}"></span>{e(_label(report, m))}</div>'
        if r is None:
            cols.append(f'<div class="answer">{who}<div class="error">not run</div></div>')
            continue
        if r.get("error"):
            cols.append(f'<div class="answer">{who}<div class="error">{e(r["error"])}</div></div>')
            continue
        text = r.get("text") or ""
        body = diff_marks(text, baseline if mi > 0 else None) if text else '<i style="color:#9ca3af">(empty)</i>'
        mt = r["metrics"]
        bits = []
        if mt.get("key_fact_recall") is not None:
            bits.append("facts " + "".join(
                f'<span class="fact {"hit" if hit else "miss"}">{e(case["key_facts"][k][0])}</span>'
                for k, hit in enumerate(mt.get("facts_found") or [])))
        for k, lab in (("token_f1", "F1"), ("chrf", "chrF"), ("semantic_similarity", "sim")):
            if mt.get(k) is not None:
                bits.append(f"{lab} {mt[k]:.2f}")
        if mt.get("latency_s") is not None:
            bits.append(f"{mt['latency_s']:.2f} s")
        if mt.get("completion_tokens") is not None:
            bits.append(f"{mt['completion_tokens']} tok")
        if r.get("finish_reason") == "length":
            bits.append("cut at max_tokens")
        if mt.get("declined"):
            bits.append('<span class="declined">declined</span>')
        cols.append(f'<div class="answer">{who}<div class="text">{body}</div>'
                    f'<div class="m">{"".join(f"<span>{b}</span>" for b in bits)}</div></div>')
    return (f'<div class="case">{"".join(head)}<div class="answers" style="--n:{len(models)}">'
            f'{"".join(cols)}</div></div>')


def job_colors(report: dict) -> list[str]:
    """A job's color is its fine-tuned model's color in the answers, so charts and tables agree."""
    colors = _colors(report["models"])
    used = set(colors.values())
    spare = [c for c in PALETTE if c not in used] or PALETTE
    out = []
    for i, j in enumerate(report["jobs"]):
        out.append(colors.get(j.get("fine_tuned_model")) or spare[i % len(spare)])
    return out


def _curve_charts(report: dict) -> str:
    jobs = report["jobs"]
    jcolors = job_colors(report)
    if not jobs or not any(j.get("curves") for j in jobs):
        return ""
    charts = []
    many = len(jobs) > 1
    for metric, title, ylab in (("loss", "Loss", "loss"), ("mean_token_accuracy", "Mean token accuracy", "accuracy")):
        series = []
        for ji, j in enumerate(jobs):
            cv = j.get("curves") or {}
            name = (j.get("suffix") or j["id"]) if many else ""
            for split, dash, col_i in (("train", False, 0), ("valid", True, 1), ("full_valid", True, 2)):
                pts = cv.get(f"{split}_{metric}")
                if not pts:
                    continue
                color = jcolors[ji] if many else PALETTE[col_i]
                label = f"{name} {split.replace('_', ' ')}".strip()
                series.append({"label": label, "color": color, "dash": dash, "points": pts,
                               "opacity": 0.85 if split == "train" and many else 1})
        if series:
            charts.append(f'<div class="chart">{line_chart(series, title=title, y_label=ylab)}</div>')
    if not charts:
        return ""
    return ('<h2>Training curves</h2><p class="note">Solid: training batches; dashed: validation. '
            'Rows of the jobs table where the jobs differ are shaded. '
            'From the jobs\' metrics events.</p><div class="charts">' + "".join(charts) + "</div>")


def _n_cases(n: int) -> str:
    return f"{n} case" if n == 1 else f"{n} cases"


def render_html(report: dict) -> str:
    """The whole page."""
    models = report["models"]
    colors = _colors(models)
    cfg = report.get("config") or {}
    n_cases = len(report["cases"])
    title = "tunery compare" if len(report["jobs"]) > 1 else "tunery eval"
    parts = [f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
             f'<meta name="viewport" content="width=device-width,initial-scale=1">'
             f'<title>{e(title)} — {n_cases} cases × {len(models)} models</title><style>{CSS}</style></head><body>',
             f'<header><h1>{e(title)}: {n_cases} cases × {len(models)} model{"s" if len(models) != 1 else ""}</h1>'
             f'<div class="meta">{e(report["created_at"])} · endpoint {e(str(cfg.get("base_url", "?")))} · '
             f'temperature {e(str(cfg.get("temperature", "?")))} · max_tokens {e(str(cfg.get("max_tokens", "?")))}'
             f'</div><div class="models">'
             + "".join(f'<span><span class="dot" style="background:{colors[m]}"></span>{e(_label(report, m))}</span>'
                       for m in models) + "</div></header><main>"]
    if report["jobs"]:
        rows = job_rows(report)
        jc = job_colors(report)
        head = "".join(f'<th><span class="dot" style="background:{jc[i]}"></span> '
                       f'{e(r["job"])}</th>' for i, r in enumerate(rows))
        # Rows where the jobs differ are what a comparison is about: mark them.
        body = "".join(f"<tr class='{'differs' if len(rows) > 1 and len({str(r[k]) for r in rows}) > 1 else ''}'>"
                       f"<td>{e(k)}</td>" + "".join(f"<td class='wrap'>{e(str(r[k]))}</td>" for r in rows)
                       + "</tr>" for k in list(rows[0])[1:])
        parts.append("<h2>Fine-tuning jobs</h2><div class='scroll'><table class='jobs'><tr><th></th>"
                     f"{head}</tr>{body}</table></div>")
        parts.append(_curve_charts(report))
    if not models:
        parts.append("</main></body></html>")
        return "".join(parts)
    parts.append("<h2>Metrics</h2><p class='note'>Means over the cases of each kind; best value per column "
                 "highlighted; small numbers are the change against the first model. "
                 + "; ".join(f"<b>{e(LABELS[k])}</b>: {e(v)}" for k, v in METRIC_HELP.items()) + ".</p>")
    kinds = report["kinds"]
    bars = [{"label": _label(report, m), "color": colors[m],
             "values": [report["summary"][m][k].get(q) for k in kinds]}
            for m in models for q in ("key_fact_recall",)]
    if any(v is not None for b in bars for v in b["values"]):
        parts.append(f'<div class="charts"><div class="chart">'
                     f'{bar_chart(kinds, bars, title="Key-fact recall by kind")}</div>')
        sem = [{"label": _label(report, m), "color": colors[m],
                "values": [report["summary"][m][k].get("semantic_similarity") or
                           report["summary"][m][k].get("token_f1") for k in kinds]} for m in models]
        sem_title = "Semantic similarity by kind" if report.get("embedding_model") else "Token F1 by kind"
        parts.append(f'<div class="chart">{bar_chart(kinds, sem, title=sem_title)}</div></div>')
    for kind in [*kinds, "all"]:
        parts.append(f"<h3>{e(kind if kind != 'all' else 'all cases')}"
                     f" <span class='badge {e(kind)}'>{_n_cases(report['summary'][models[0]][kind]['n'])}</span></h3>")
        if kind in KIND_TEXT:
            parts.append(f"<p class='note'>{e(KIND_TEXT[kind])}</p>")
        parts.append(_metric_table(report, kind, colors))
    parts.append("<h2>Answers side by side</h2><p class='note'>Highlighted words differ from the first "
                 "model's answer. Key facts: green = stated, red = missing.</p>")
    by_case: dict[str, dict] = {}
    for r in report["results"]:
        by_case.setdefault(r["case_id"], {})[r["model"]] = r
    for kind in kinds:
        cases = [c for c in report["cases"] if c["kind"] == kind]
        parts.append(f'<details class="kind" open><summary>{e(kind)} ({len(cases)})</summary>')
        parts.extend(_case_card(report, c, by_case.get(c["id"], {}), colors) for c in cases)
        parts.append("</details>")
    emb = report.get("embedding_model")
    parts.append(f"<footer>Generated by tunery eval. Semantic similarity: {e(emb) if emb else 'off'}. "
                 "Decline detection: refusal phrases in the answer's opening, plus similarity to decline "
                 "templates when embeddings are on (English-centred; read the answers).</footer>")
    parts.append("</main></body></html>")
    return "".join(parts)


def write_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """report.json and report.html in out_dir (here, not in report.py, which html.py builds on)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(report, out_dir / "report.json"), "html": out_dir / "report.html"}
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths
