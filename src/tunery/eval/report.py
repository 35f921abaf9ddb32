"""The evaluation report as data (JSON), as rich tables for the terminal, and written to disk."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from tunery.eval.score import COST, QUALITY

REPORT_VERSION = 1

LABELS = {
    "exact_match": "exact", "key_fact_recall": "key facts", "token_f1": "token F1", "chrf": "chrF",
    "semantic_similarity": "semantic", "decline_rate": "declined",
    "answered_when_should_decline": "answered¹", "answer_words": "words", "latency_s": "latency s",
    "completion_tokens": "out tok", "tokens_total": "tokens", "errors": "errors", "n": "n",
}


# Narrow headers for the terminal, where a dozen columns must fit 80-120 characters.
TERM_LABELS = {**LABELS, "exact_match": "EM", "key_fact_recall": "facts", "token_f1": "F1",
               "semantic_similarity": "sem", "decline_rate": "decl", "answered_when_should_decline": "ans¹",
               "latency_s": "lat s", "tokens_total": "tok", "errors": "err"}


def build_report(*, cases, results, summary, models, kinds, config: dict, jobs=None,
                 model_labels: dict | None = None, embedding_model: str | None = None) -> dict:
    """Everything the JSON, terminal and HTML views show, JSON-able."""
    return {
        "tunery_eval": REPORT_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "embedding_model": embedding_model,
        "models": models,
        "model_labels": model_labels or {},
        "kinds": kinds,
        "cases": [c.to_dict() for c in cases],
        "results": results,
        "summary": summary,
        "jobs": [j.to_dict() for j in (jobs or [])],
    }


def write_json(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def fmt(key: str, v) -> str:
    if v is None:
        return "–"
    if key in ("n", "errors", "tokens_total", "n_should_decline"):
        return str(int(v))
    if key in QUALITY or key in ("decline_rate", "answered_when_should_decline"):
        return f"{v:.2f}"
    if key == "latency_s":
        return f"{v:.2f}"
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}"


def columns(kind: str, groups: list[dict]) -> list[str]:
    """Metric columns worth showing for a kind (drops columns that are empty for every model)."""
    cols = ["n", *QUALITY, "decline_rate"]
    if kind == "off-topic" or any(g.get("n_should_decline") for g in groups):
        cols.append("answered_when_should_decline")
    cols += [*COST, "tokens_total", "errors"]
    keep_always = {"n", "errors", "decline_rate"}
    return [c for c in cols if c in keep_always or any(g.get(c) is not None for g in groups)]


def short_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def last_value(curve: list | None):
    return curve[-1][1] if curve else None


def job_rows(report: dict) -> list[dict]:
    """One flat row per job: the columns of the jobs table."""
    rows = []
    for j in report["jobs"]:
        hp = j.get("hyperparameters") or {}
        tr, va = (j.get("dataset") or {}).get("training") or {}, (j.get("dataset") or {}).get("validation") or {}
        secs = j.get("training_seconds")
        rows.append({
            "job": j["id"], "base model": j["model"], "fine-tuned model": j.get("fine_tuned_model") or "–",
            "status": j["status"], "method": j.get("method") or "–",
            "epochs": hp.get("n_epochs", "–"), "batch": hp.get("batch_size", "–"),
            "lr mult": hp.get("learning_rate_multiplier", "–"),
            "train ex": tr.get("examples", "–"), "valid ex": va.get("examples", "–"),
            "answer words": f"{tr['mean_answer_words']:.0f}" if tr.get("mean_answer_words") else "–",
            "trained tokens": j.get("trained_tokens") if j.get("trained_tokens") is not None else "–",
            "training time": short_duration(secs),
            "tok/s": f"{j['trained_tokens'] / secs:.0f}" if secs and j.get("trained_tokens") else "–",
            "final train loss": fmt("x", last_value((j.get("curves") or {}).get("train_loss"))),
            "final valid loss": fmt("x", last_value((j.get("curves") or {}).get("valid_loss"))),
        })
    return rows


def terminal_tables(report: dict) -> list:
    """rich Tables: the jobs (if any), then one metrics table per kind plus 'all'."""
    from rich.table import Table

    out = []
    if report["jobs"]:
        # One column per job, one row per attribute: jobs are compared by reading across.
        rows = job_rows(report)
        t = Table(title="Fine-tuning jobs", title_style="bold")
        t.add_column("")
        for r in rows:
            t.add_column(r["job"], overflow="fold")
        for key in list(rows[0])[1:]:
            t.add_row(key, *(str(r[key]) for r in rows))
        out.append(t)
    labels = report.get("model_labels") or {}
    # "all" repeats the only table when the spec has a single kind.
    kinds = [*report["kinds"], "all"] if len(report["kinds"]) > 1 else list(report["kinds"])
    for kind in kinds if report["models"] else []:
        groups = [report["summary"][m][kind] for m in report["models"]]
        cols = [c for c in columns(kind, groups) if c != "completion_tokens"]
        n = groups[0]["n"] if groups else 0
        t = Table(title=f"{kind} ({n} case{'s' if n != 1 else ''})" if kind != "all" else "all cases",
                  title_style="bold")
        t.add_column("model", overflow="fold")
        for c in cols:
            t.add_column(TERM_LABELS.get(c, c), justify="right", no_wrap=True)
        best = {c: max(vals) for c in QUALITY
                if len(set(vals := [g[c] for g in groups if g.get(c) is not None])) > 1}
        for m, g in zip(report["models"], groups):
            cells = []
            for c in cols:
                s = fmt(c, g.get(c))
                if c in best and g.get(c) == best[c]:
                    s = f"[bold green]{s}[/bold green]"
                if c == "errors" and g.get(c):
                    s = f"[red]{s}[/red]"
                cells.append(s)
            t.add_row(labels.get(m, m), *cells)
        out.append(t)
    return out


ON_TOPIC = ("verbatim", "variation")


def guard_comparison(report: dict, pairs: list[tuple[str, str]]) -> list[dict]:
    """For each (guarded model, same model without its guard): off-topic decline rate and on-topic answer
    rate (verbatim + variation cases not declined), without → with the guard."""
    out = []
    for guarded, bare in pairs:
        row = {"model": guarded, "without": bare}
        for key, name in (("without", bare), ("with", guarded)):
            res = [r for r in report["results"] if r["model"] == name and r["error"] is None]
            off = [r for r in res if r["kind"] == "off-topic"]
            on = [r for r in res if r["kind"] in ON_TOPIC]
            row[f"off_topic_declined_{key}"] = (sum(bool(r["metrics"]["declined"]) for r in off) / len(off)
                                                if off else None)
            row[f"on_topic_answered_{key}"] = (sum(not r["metrics"]["declined"] for r in on) / len(on)
                                               if on else None)
            row[f"n_off_topic"], row[f"n_on_topic"] = len(off), len(on)
        out.append(row)
    return out


def guard_lines(rows: list[dict]) -> list[str]:
    """Two lines per guarded model for the terminal."""
    lines = []
    for g in rows:
        lines.append(f"guard on {g['model']}: off-topic declined {fmt('decline_rate', g['off_topic_declined_without'])}"
                     f" → {fmt('decline_rate', g['off_topic_declined_with'])} (without → with, {g['n_off_topic']} cases)")
        lines.append(f"  on-topic answered {fmt('decline_rate', g['on_topic_answered_without'])} → "
                     f"{fmt('decline_rate', g['on_topic_answered_with'])} ({g['n_on_topic']} verbatim + variation cases)")
    return lines
