"""`tunery eval` and `tunery compare`: ask models questions through an OpenAI-compatible API and report."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, \
    TimeElapsedColumn, TimeRemainingColumn

from tunery.errors import InvalidRequest, TuneryError

console = Console()

BaseUrlOpt = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (default $TUNERY_BASE_URL or "
                                                   "the local `tunery serve`, http://127.0.0.1:8000/v1).")
ApiKeyOpt = typer.Option(None, "--api-key", help="API key (default $TUNERY_API_KEY, then $OPENAI_API_KEY).")
ConcOpt = typer.Option(4, "--concurrency", "-c", min=1, help="Requests in flight at once.")
MaxTokOpt = typer.Option(256, "--max-tokens", min=1, help="Longest answer, in tokens.")
TempOpt = typer.Option(0.0, "--temperature", min=0.0, help="Sampling temperature (0 = greedy, reproducible).")
RetriesOpt = typer.Option(4, "--retries", min=0, help="Retries on 429 / 5xx / timeouts, with backoff.")
TimeoutOpt = typer.Option(300.0, "--timeout", help="Seconds per request.")
LimitOpt = typer.Option(25, "--limit", min=1, help="At most this many verbatim and this many variation cases "
                                                  "per job (a seeded sample).")
OutOpt = typer.Option(None, "--out", "-o", help="Directory for report.json and report.html "
                                               "(default ./tunery-eval-<time>).")
SemanticOpt = typer.Option(True, "--semantic/--no-semantic",
                           help="Semantic similarity with all-MiniLM-L6-v2 (loads in a few seconds).")
OffTopicOpt = typer.Option(True, "--off-topic/--no-off-topic",
                           help="Add a few generic off-topic questions to cases built from jobs.")
CkptOpt = typer.Option(False, "--checkpoints", help="Also evaluate every kept epoch checkpoint of the jobs "
                                                   "(ft:…:ckpt-step-N), to see where training should stop.")
DeclineOpt = typer.Option(False, "--should-decline", help="The built-in off-topic questions should be declined "
                                                          "(a fine-tune meant to stay on its topic).")


def _config(base_url, api_key, concurrency, max_tokens, temperature, retries, timeout):
    from tunery.eval.runner import RunConfig

    cfg = RunConfig(concurrency=concurrency, max_tokens=max_tokens, temperature=temperature, retries=retries,
                    timeout=timeout)
    if base_url:
        cfg.base_url = base_url
    if api_key:
        cfg.api_key = api_key
    return cfg


def _client(cfg):
    import openai

    return openai.OpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=2, timeout=60)


def _preflight(client, base_url: str) -> None:
    """Fail in one line when nothing listens there, instead of retrying every case."""
    import openai

    try:
        client.models.list()
    except openai.APIConnectionError as exc:
        raise TuneryError(f"cannot reach {base_url} ({exc.__cause__ or exc}); is `tunery serve` running? "
                          "(or pass --base-url)") from None
    except openai.APIStatusError as exc:
        if exc.status_code in (401, 403):
            raise TuneryError(f"{base_url} refused the API key (HTTP {exc.status_code}); pass --api-key") from None


def _fetch_jobs(client, job_ids: list[str], with_files: bool):
    import openai

    from tunery.eval.jobs import fetch_job

    out = []
    for jid in job_ids:
        try:
            out.append(fetch_job(client, jid, with_files=with_files))
        except openai.NotFoundError:
            raise TuneryError(f"fine-tuning job {jid} not found at {client.base_url}") from None
    return out


def _job_models(infos, include_base: bool, checkpoints: bool = False) -> tuple[list[str], dict[str, str]]:
    models, labels = [], {}
    for info in infos:
        if include_base and info.model not in models:
            models.append(info.model)
            labels[info.model] = f"{info.model} (base)"
        if checkpoints:
            # The last checkpoint is the final model under another name: skip it.
            for ck in sorted(info.checkpoints, key=lambda c: c["step"])[:-1]:
                if ck.get("model") and ck["model"] not in models and ck["model"] != info.fine_tuned_model:
                    models.append(ck["model"])
                    labels[ck["model"]] = f"{info.id} step {ck['step']}"
        if info.fine_tuned_model:
            if info.fine_tuned_model not in models:
                models.append(info.fine_tuned_model)
            labels[info.fine_tuned_model] = info.fine_tuned_model  # the jobs table names its job
        else:
            console.print(f"[yellow]{info.id} is {info.status}: it has no fine-tuned model to evaluate[/yellow]")
    return models, labels


def _cases_from_jobs(infos_texts, limit: int, off_topic: bool, should_decline: bool):
    from tunery.eval.jobs import cases_from_job, off_topic_cases

    seen, cases = set(), []
    for info, texts in infos_texts:
        for c in cases_from_job(info, texts, limit=limit, off_topic=False):
            key = (c.kind, json.dumps(c.messages, sort_keys=True))
            if key not in seen:
                seen.add(key)
                if len(infos_texts) > 1:
                    c.id = f"{info.id[-6:]}-{c.id}"
                cases.append(c)
    if off_topic:
        cases += off_topic_cases(should_decline)
    return cases


NO_GUARD = " [no guard]"
GuardOpt = typer.Option(False, "--compare-guard", help="For every model with a tunery guard, also ask it with "
                                                     "the guard off: off-topic declines and on-topic answers, "
                                                     "without → with the guard.")


def _guard_variants(client, models: list[str], cfg, labels: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """Add '<model> [no guard]' beside every guarded model (GET /v1/tunery/guards/{model} answers 200)."""
    from urllib.parse import quote

    import openai

    out, pairs = [], []
    for m in models:
        try:
            client.get(f"/tunery/guards/{quote(m, safe=':')}", cast_to=object)
        except openai.NotFoundError:
            out.append(m)
            continue
        except openai.APIStatusError as exc:
            raise TuneryError(f"cannot read the guard of {m} at {cfg.base_url} (HTTP {exc.status_code})") from None
        bare = m + NO_GUARD
        cfg.variants[bare] = (m, {"tunery_guard": "off"})
        labels.setdefault(bare, labels.get(m, m) + NO_GUARD)
        labels.setdefault(m, m)
        labels[m] = labels[m] + " [guarded]"
        out += [bare, m]
        pairs.append((m, bare))
    if not pairs:
        console.print("[yellow]--compare-guard: none of the models has a guard[/yellow]")
    return out, pairs


def _run(cases, models, cfg, semantic: bool, jobs, labels: dict, out: Optional[Path], prefix: str,
         guard_pairs: list | None = None) -> dict:
    from tunery.eval.core import evaluate
    from tunery.eval.html import write_reports
    from tunery.eval.report import guard_comparison, guard_lines, terminal_tables

    if not models:
        raise InvalidRequest("no model to evaluate: pass --model (or jobs that succeeded)", param="model")
    if not cases:
        raise InvalidRequest("no cases to run: pass a spec file or --from-job", param="spec")
    console.print(f"[bold]{len(cases)} cases × {len(models)} models[/bold] against {cfg.base_url} "
                  f"(concurrency {cfg.concurrency}, temperature {cfg.temperature}, max_tokens {cfg.max_tokens})")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("[red]{task.fields[errors]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as progress:
        tasks = {m: progress.add_task(labels.get(m, m), total=len(cases), errors="") for m in models}
        errors: dict[str, int] = {}

        def on_answer(a) -> None:
            if a.error:
                errors[a.model] = errors.get(a.model, 0) + 1
            progress.update(tasks[a.model], advance=1,
                            errors=f"{errors[a.model]} failed" if errors.get(a.model) else "")

        stage = progress.add_task("waiting for answers", total=None, errors="", visible=False)

        def on_stage(msg: str) -> None:
            progress.update(stage, description=msg, visible=True)

        report = evaluate(cases, models, cfg, semantic=semantic, jobs=jobs, model_labels=labels,
                          on_answer=on_answer, on_stage=on_stage)
        progress.update(stage, visible=False)
    for table in terminal_tables(report):
        console.print(table)
    if guard_pairs:
        report["guard_comparison"] = guard_comparison(report, guard_pairs)
        for line in guard_lines(report["guard_comparison"]):
            console.print(line, highlight=False)
    if any(report["summary"][m]["all"].get("n_should_decline") for m in models):
        console.print("[dim]ans¹ = share of should-decline cases the model answered anyway (lower is better)[/dim]")
    first_errors = {}
    for r in report["results"]:
        if r["error"] and r["model"] not in first_errors:
            first_errors[r["model"]] = r["error"]
    for m, err in first_errors.items():
        console.print(f"[red]{labels.get(m, m)}: {err}[/red]")
    out = out or Path(f"{prefix}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    paths = write_reports(report, out)
    console.print(f"[green]report:[/green] {paths['html']}  [dim](data: {paths['json']})[/dim]")
    if all(r["error"] for r in report["results"]):
        raise TuneryError("every request failed; see the errors above")
    return report


def eval_cmd(
    spec: Optional[Path] = typer.Argument(None, help="JSONL or YAML file of cases (see README, Evaluation)."),
    model: List[str] = typer.Option([], "--model", "-m", help="Model to ask; repeat to compare several."),
    from_job: List[str] = typer.Option([], "--from-job", help="Build verbatim cases from this job's training file "
                                       "and variation cases from its validation file; its base and fine-tuned "
                                       "models are evaluated unless --model is given. Repeatable."),
    base_url: Optional[str] = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt,
    concurrency: int = ConcOpt, max_tokens: int = MaxTokOpt, temperature: float = TempOpt,
    retries: int = RetriesOpt, timeout: float = TimeoutOpt, limit: int = LimitOpt,
    off_topic: bool = OffTopicOpt, should_decline: bool = DeclineOpt, checkpoints: bool = CkptOpt,
    semantic: bool = SemanticOpt, out: Optional[Path] = OutOpt, compare_guard: bool = GuardOpt,
) -> None:
    """Ask every case of SPEC (and/or of --from-job) to every model; print tables, write JSON and HTML reports."""
    from tunery.eval.spec import load_spec, merge_cases

    if spec is None and not from_job:
        raise InvalidRequest("give a spec file, --from-job ftjob-…, or both", param="spec")
    cfg = _config(base_url, api_key, concurrency, max_tokens, temperature, retries, timeout)
    spec_cases = load_spec(spec) if spec is not None else []  # spec errors before any network call
    client = _client(cfg)
    _preflight(client, cfg.base_url)
    jobs, labels, models = [], {}, list(dict.fromkeys(model))
    job_cases = []
    if from_job:
        fetched = _fetch_jobs(client, list(from_job), with_files=True)
        jobs = [info for info, _ in fetched]
        job_models, labels = _job_models(jobs, include_base=True, checkpoints=checkpoints)
        if not models:
            models = job_models
        job_cases = _cases_from_jobs(fetched, limit, off_topic, should_decline)
    pairs = None
    if compare_guard:
        models, pairs = _guard_variants(client, models, cfg, labels)
    _run(merge_cases(spec_cases, job_cases), models, cfg, semantic, jobs, labels, out, "tunery-eval", pairs)


def compare_cmd(
    jobs: List[str] = typer.Argument(..., help="Fine-tuning job ids (ftjob-…) to compare."),
    spec: Optional[Path] = typer.Option(None, "--spec", help="Cases to run (default: built from the jobs' files)."),
    evaluate_models: bool = typer.Option(True, "--eval/--no-eval", help="Also run the cases (else only the "
                                         "training side: hyperparameters, data, curves)."),
    base: bool = typer.Option(True, "--base/--no-base", help="Also evaluate the jobs' base model(s)."),
    base_url: Optional[str] = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt,
    concurrency: int = ConcOpt, max_tokens: int = MaxTokOpt, temperature: float = TempOpt,
    retries: int = RetriesOpt, timeout: float = TimeoutOpt, limit: int = LimitOpt,
    off_topic: bool = OffTopicOpt, should_decline: bool = DeclineOpt, checkpoints: bool = CkptOpt,
    semantic: bool = SemanticOpt, out: Optional[Path] = OutOpt,
) -> None:
    """Compare fine-tuning jobs: hyperparameters, dataset stats, loss/accuracy curves overlaid, training time,
    trained tokens, and the same evaluation run against each job's model."""
    from tunery.eval.html import write_reports
    from tunery.eval.report import build_report, terminal_tables
    from tunery.eval.spec import load_spec

    cfg = _config(base_url, api_key, concurrency, max_tokens, temperature, retries, timeout)
    spec_cases = load_spec(spec) if spec is not None else None
    client = _client(cfg)
    _preflight(client, cfg.base_url)
    fetched = _fetch_jobs(client, list(dict.fromkeys(jobs)), with_files=True)
    infos = [info for info, _ in fetched]
    if not evaluate_models:
        report = build_report(cases=[], results=[], summary={}, models=[], kinds=[],
                              config={"base_url": cfg.base_url}, jobs=infos)
        for table in terminal_tables(report):
            console.print(table)
        paths = write_reports(report, out or Path(f"tunery-compare-{_dt.datetime.now():%Y%m%d-%H%M%S}"))
        console.print(f"[green]report:[/green] {paths['html']}  [dim](data: {paths['json']})[/dim]")
        return
    models, labels = _job_models(infos, include_base=base, checkpoints=checkpoints)
    cases = spec_cases if spec_cases is not None else _cases_from_jobs(fetched, limit, off_topic, should_decline)
    _run(cases, models, cfg, semantic, infos, labels, out, "tunery-compare")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)
