"""`tunery data …`: validate, stats, split and convert training files."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tunery.data.discriminator import DEFAULT_REWRITES

app = typer.Typer(help="Check, measure, split and convert fine-tuning data (JSONL).", no_args_is_help=True)
console = Console()

FileArg = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="A JSONL training file.")
ModelOpt = typer.Option(None, "--model", "-m",
                        help="The base model you will fine-tune; its own tokenizer counts the tokens. "
                             "Default: the bundled model.")


def _model(model: Optional[str]) -> str:
    from tunery.models import DEFAULT_MODEL

    return model or DEFAULT_MODEL


@contextmanager
def _progress(paths: list[Path], quiet: bool):
    """A byte-based progress bar over the files read; yields the callback validate_file takes."""
    if quiet:
        yield None
        return
    total = sum(p.stat().st_size for p in paths)
    done_before = {"training": 0, "validation": paths[0].stat().st_size}
    with Progress(TextColumn("[bold]reading"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("read", total=total)
        yield lambda file, done: bar.update(task, completed=done_before.get(file, 0) + done)


def _fmt_lines(p) -> str:
    if not p.lines or p.lines == [0]:
        return "—"
    s = ", ".join(map(str, p.lines))
    return s + (f" (+{p.count - len(p.lines)})" if p.count > len(p.lines) else "")


@app.command()
def validate(
    file: Path = FileArg,
    model: Optional[str] = ModelOpt,
    validation: Optional[Path] = typer.Option(None, "--validation", "-v", exists=True, dir_okay=False,
                                              help="The validation file; it is also checked for examples "
                                                   "shared with the training file."),
    no_tokens: bool = typer.Option(False, "--no-tokens",
                                   help="Skip token counting (no tokenizer is loaded)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Report every problem in a training file, grouped by kind with line numbers and fixes.

    Exits 1 when there are errors; warnings alone exit 0.
    """
    from tunery.data.validation import validate_file

    name = None if no_tokens else _model(model)
    paths = [file] + ([validation] if validation else [])
    with _progress(paths, quiet=as_json) as progress:
        report = validate_file(file, model=name, validation_path=validation, progress=progress)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        raise typer.Exit(0 if report.ok else 1)
    head = (f"[bold]{escape(file.name)}[/bold]: {report.format or 'unknown'} format, "
            f"{report.n_examples:,} valid example(s) in {report.n_lines:,} line(s)")
    if validation:
        head += f"; validation {escape(validation.name)}: {report.n_validation_examples or 0:,} example(s)"
    console.print(head)
    if name:
        console.print(f"tokens counted with [cyan]{escape(name)}[/cyan]'s tokenizer "
                      f"(context {report.context_length:,})")
        if report.token_stats:
            t = report.token_stats["tokens"]
            console.print(f"tokens per example: min {t['min']:,}, mean {t['mean']:,}, p95 {t['p95']:,}, "
                          f"max {t['max']:,}")
    for p in report.errors + report.warnings:
        mark = "[red]✗ error[/red]" if p.severity == "error" else "[yellow]! warn[/yellow] "
        where = " in the validation file" if p.file == "validation" else ""
        n = "" if p.lines in ([], [0]) else f" — {p.count:,} line(s): {_fmt_lines(p)}"
        console.print(f"{mark} [bold]{escape(p.title)}[/bold]{where} [dim]({p.kind})[/dim]{n}",
                      highlight=False)
        detail = next((d for d in p.details if d), "")
        if detail:
            console.print(f"    e.g. {escape(detail)}", highlight=False)
        console.print(f"    fix: {escape(p.hint)}", highlight=False)
    if report.ok:
        console.print("[green]✓ no errors[/green]" + (f" ({len(report.warnings)} kind(s) of warning)"
                                                         if report.warnings else ""))
    else:
        n = sum(p.count for p in report.errors)
        console.print(f"[red]✗ {n:,} error(s) in {len(report.errors)} kind(s): "
                      "fix them before training[/red]")
        raise typer.Exit(1)


def _bar_chart(hist: dict, width: int = 40) -> list[str]:
    counts, edges = hist["counts"], hist["edges"]
    if not counts:
        return []
    peak = max(counts)
    w = len(f"{edges[-1]:,}")
    out = []
    for i, c in enumerate(counts):
        bar = "█" * max(1 if c else 0, round(c / peak * width))
        out.append(f"  {edges[i]:>{w},} – {edges[i + 1] - 1:>{w},} │ {bar} {c:,}")
    return out


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


@app.command()
def stats(
    file: Path = FileArg,
    model: Optional[str] = ModelOpt,
    method: str = typer.Option("lora", help="Training method for the time estimate: lora or full."),
    n_epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs to assume (default: auto)."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Examples, tokens (per example, assistant), the run the trainer would make of the file (epochs, question
    rewrites, replay; the same rules as a job with auto hyperparameters), trained tokens and the training
    time that takes."""
    from tunery.data.stats import file_stats
    from tunery.train.plan import RunPlanner

    name = _model(model)
    with _progress([file], quiet=as_json) as progress:
        st = file_stats(file, name, planner=RunPlanner(n_epochs), method=method, progress=progress)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    console.print(f"[bold]{escape(file.name)}[/bold]: {st['n_examples']:,} {st['format'] or ''} examples, "
                  f"tokens counted with [cyan]{escape(name)}[/cyan]"
                  + (f" = {escape(st['base_model'])}" if st["base_model"] not in (name, str(name)) and
                     "/" not in st["base_model"] else "")
                  + f" (context {st['context_length']:,})")
    table = Table(show_header=True)
    for col in ("per example", "min", "mean", "p95", "max", "total"):
        table.add_column(col, justify="right" if col != "per example" else "left")
    for label, key in (("messages", "messages_per_example"), ("tokens", "tokens_per_example"),
                       ("assistant tokens", "assistant_tokens_per_example")):
        d = st[key]
        if d:
            table.add_row(label, *(f"{d[k]:,}" for k in ("min", "mean", "p95", "max", "total")))
    console.print(table)
    lines = _bar_chart(st["histogram"])
    if lines:
        console.print("tokens per example:")
        for line in lines:
            console.print(line, highlight=False)
    if st["n_over_context"]:
        console.print(f"[yellow]{st['n_over_context']:,} example(s) exceed the context "
                      "and will be truncated[/yellow]")
    console.print(_plan_line(st), highlight=False)
    if st["estimated_seconds"] is not None:
        console.print(f"estimated training time ({st['method']}): [bold]{_duration(st['estimated_seconds'])}"
                      f"[/bold] at {st['tokens_per_second']:,} tokens/s — "
                      f"{escape(st['throughput_source'])}")
    if not st["validation"]["ok"]:
        console.print(f"[yellow]the file has {st['validation']['n_errors']:,} error(s); "
                      f"run `tunery data validate {escape(str(file))}`[/yellow]")


def _plan_line(st: dict) -> str:
    """The run the trainer would make of the file, in one or two lines."""
    parts = [f"{st['n_examples']:,} example(s)"]
    if st["augment"]:
        parts.append(f"{st['augment']} question rewrite(s) of each chat")
    if st["replay"]:
        parts.append(f"~{st['replay']} replayed base-model answers")
    epochs = f"epochs: [bold]{st['n_epochs']}[/bold] ({st['n_epochs_source']}"
    epochs += ", at most: it stops early once every answer is reproduced)" if st["early_stop"] else ")"
    return (f"{epochs}, batch size {st['batch_size']}, {st['examples_per_epoch']:,} examples an epoch ("
            + " + ".join(parts) + f")   trained tokens: [bold]{st['trained_tokens']:,}[/bold] "
            f"({st['trained_tokens_per_epoch']:,} an epoch; the file itself has {st['file_tokens']:,})")


@app.command()
def split(
    file: Path = FileArg,
    valid_fraction: float = typer.Option(0.1, "--valid-fraction", min=0.0, max=1.0,
                                         help="Share of examples for the validation file."),
    seed: int = typer.Option(0, "--seed", help="Same file and seed → same split."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where to write (default: beside FILE)."),
) -> None:
    """Split FILE into <stem>_train.jsonl and <stem>_valid.jsonl, deterministically, without duplicates."""
    from tunery.data.split import split_file

    r = split_file(file, valid_fraction, seed, out_dir)
    console.print(f"wrote {r.n_train:,} examples to {escape(str(r.train_path))}")
    console.print(f"wrote {r.n_valid:,} examples to {escape(str(r.valid_path))}")
    if r.n_duplicates:
        console.print(f"[yellow]dropped {r.n_duplicates:,} exact duplicate(s)[/yellow]")
    if r.n_invalid:
        console.print(f"[yellow]skipped {r.n_invalid:,} invalid line(s); "
                      f"see `tunery data validate {escape(str(file))}`[/yellow]")


@app.command()
def convert(
    src: Path = typer.Argument(..., exists=True, dir_okay=False,
                               help="CSV/TSV, JSON array or JSONL of Q&A pairs, prompt/completion, or chat."),
    out: Path = typer.Argument(..., dir_okay=False, help="The JSONL file to write."),
    to: str = typer.Option("chat", "--to",
                           help="chat (from Q&A or prompt/completion) or completion (from chat)."),
    question: Optional[str] = typer.Option(None, "--question", "-q",
                                           help="Question column (default: guessed)."),
    answer: Optional[str] = typer.Option(None, "--answer", "-a", help="Answer column (default: guessed)."),
    system: Optional[str] = typer.Option(None, "--system", "-s",
                                         help="System message added to every example."),
    stop: Optional[str] = typer.Option(None, "--stop",
                                       help='Marker appended to every answer, e.g. " **STOP**".'),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite OUT if it exists."),
) -> None:
    """Convert Q&A tables or prompt/completion data to chat JSONL, or chat to prompt/completion."""
    from tunery.data.convert import chat_to_completion, qa_to_chat
    from tunery.errors import InvalidRequest

    if out.exists() and not force:
        raise InvalidRequest(f"{out} exists; pass --force to overwrite it")
    if os.path.abspath(out) == os.path.abspath(src):
        raise InvalidRequest("OUT must differ from SRC")
    if to == "chat":
        r = qa_to_chat(src, out, question=question, answer=answer, system=system, stop=stop)
        console.print(f"wrote {r.n_written:,} chat examples to {escape(str(out))} "
                      f"(question: {escape(str(r.question_column))}, answer: {escape(str(r.answer_column))})")
    elif to == "completion":
        r = chat_to_completion(src, out, stop=stop)
        console.print(f"wrote {r.n_written:,} prompt/completion examples to {escape(str(out))}")
    else:
        raise InvalidRequest(f"--to must be chat or completion, not {to!r}", param="to")
    if r.n_skipped:
        console.print(f"[yellow]skipped {r.n_skipped:,} row(s) without usable text, e.g. line(s) "
                      f"{', '.join(map(str, r.skipped_lines))}[/yellow]")


# --- generate and discriminator (issue #15: documents → Q&A → classifier data) -------------------------

def _client():
    from tunery.settings import get_settings

    return get_settings().client


@app.command()
def generate(
    docs: list[Path] = typer.Argument(..., help="Markdown, HTML or text files, or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", dir_okay=False, help="The chat JSONL file to write."),
    n: int = typer.Option(3, "--n", "-n", min=1, max=20, help="Question/answer pairs to ask for per section."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System message of every example."),
    stop_suffix: Optional[str] = typer.Option(None, "--stop-suffix",
                                              help='Appended to every answer, e.g. " **STOP**".'),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (default "
                                           "$TUNERY_BASE_URL or the local server http://127.0.0.1:8000/v1)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model that writes the pairs "
                                        "(default: the bundled model)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="API key (default $TUNERY_API_KEY, "
                                          "then $OPENAI_API_KEY)."),
    budget: int = typer.Option(400, "--budget", min=32, help="Most tokens of document text per section."),
    min_grounding: float = typer.Option(0.5, "--min-grounding", min=0.0, max=1.0,
                                        help="Share of an answer's content words that must occur in its "
                                             "section (else rejected as not grounded)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, max=2.0),
    max_tokens: int = typer.Option(600, "--max-tokens", min=16, help="Longest reply per section."),
    concurrency: int = typer.Option(2, "--concurrency", "-c", min=1, help="Sections asked at once."),
    force: bool = typer.Option(False, "--force", "-f", help="Start over, overwriting OUT and its sidecars."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Ask a model for question/answer pairs about every section of DOCS; write chat JSONL.

    Re-running continues: sections already done are skipped. OUT.sources.jsonl names each pair's section.
    """
    from tunery.data.generate import REJECT_REASONS, GenerateConfig, Limits
    from tunery.data.generate import generate as run_generate
    from tunery.models import DEFAULT_MODEL

    cfg = GenerateConfig(base_url=base_url or _client().server, model=model or DEFAULT_MODEL,
                         api_key=api_key or _client().bearer, pairs_per_section=n, system=system,
                         stop_suffix=stop_suffix, budget=budget, temperature=temperature, max_tokens=max_tokens,
                         concurrency=concurrency, limits=Limits(min_grounding=min_grounding))
    err = Console(stderr=True)
    with Progress(TextColumn("[bold]generating"), BarColumn(), TextColumn("{task.completed}/{task.total} sections"),
                  TextColumn("{task.fields[pairs]} pairs"), TimeRemainingColumn(), console=err,
                  disable=as_json) as bar:
        task = bar.add_task("gen", total=None, pairs=0)
        kept = {"n": 0}

        def on_plan(total: int, done: int) -> None:
            bar.update(task, total=total, completed=done)

        def on_section(_section, pairs: int, _failure) -> None:
            kept["n"] += pairs
            bar.update(task, advance=1, pairs=kept["n"])

        rep = run_generate(docs, out, cfg, force=force, on_plan=on_plan, on_section=on_section)
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), indent=2))
        raise typer.Exit(0 if rep.n_pairs_total else 1)
    console.print(f"[bold]{rep.n_documents}[/bold] document(s), [bold]{rep.n_sections}[/bold] section(s): "
                  f"{rep.n_sections_done} asked now, {rep.n_sections_done_before} done before"
                  + (f", [red]{rep.n_sections_failed} failed[/red] (re-run to retry)" if rep.n_sections_failed else ""))
    console.print(f"pairs: {rep.n_pairs_asked} proposed, [green]{rep.n_pairs_written} written[/green], "
                  f"{sum(rep.rejects.values())} rejected; {rep.n_pairs_total} in {escape(str(out))}")
    for code, k in rep.rejects.items():
        if k:
            console.print(f"  rejected: {k} × {REJECT_REASONS[code]} [dim]({code})[/dim]")
    for f in rep.failures:
        console.print(f"  [yellow]failed: {escape(f)}[/yellow]")
    console.print(f"[dim]sources: {escape(rep.sources_path)}  state: {escape(rep.state_path)}[/dim]")
    if not rep.n_pairs_total:
        console.print("[red]no pairs were written[/red]")
        raise typer.Exit(1)


@app.command()
def discriminator(
    chat_file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                     help="Chat JSONL whose user questions are on topic (e.g. from `data generate`)."),
    out: Path = typer.Option(..., "--out", "-o", dir_okay=False,
                             help="Writes <stem>_train.jsonl and <stem>_valid.jsonl beside this name."),
    negatives: Optional[Path] = typer.Option(None, "--negatives", exists=True, dir_okay=False,
                                             help="Off-topic questions (text, one per line, or JSONL); default: "
                                                  "the bundled list of varied off-topic questions."),
    separator: str = typer.Option("\n\n###\n\n", "--separator",
                                  help="Ends every prompt (escape sequences like \\n are understood)."),
    valid_fraction: float = typer.Option(0.2, "--valid-fraction", min=0.01, max=0.9,
                                         help="Share of each label held out for validation."),
    max_per_label: Optional[int] = typer.Option(None, "--max-per-label", min=2),
    rewrites: int = typer.Option(DEFAULT_REWRITES, "--rewrites", min=0, max=50,
                                 help="Rewritten forms of every question to add (keywords, synonyms, frames, "
                                      "typos), on both labels, so the classifier learns topics, not wordings."),
    seed: int = typer.Option(0, "--seed", help="Same inputs and seed → same files."),
) -> None:
    """Build a yes/no topic classifier set (prompt/completion, " yes" on topic, " no" off topic), balanced."""
    from tunery.data.discriminator import build_discriminator

    sep = separator.encode("utf-8").decode("unicode_escape") if "\\" in separator else separator
    r = build_discriminator(chat_file, out, negatives=negatives, separator=sep, valid_fraction=valid_fraction,
                            seed=seed, max_per_label=max_per_label, rewrites=rewrites)
    console.print(f"on-topic questions: {r.n_positive_available}, off-topic: {r.n_negative_available}"
                  + (f" ({r.n_dropped_overlap} dropped: also on topic)" if r.n_dropped_overlap else "")
                  + f"; {r.n_per_label} on-topic questions used"
                  + (f", each also in {r.n_rewrites} rewritten forms, against {r.n_negative_used} off-topic "
                     "questions in the same forms" if r.n_rewrites else f" against {r.n_per_label} off-topic"))
    console.print(f"wrote {r.n_train} examples to {escape(r.train_path)}")
    console.print(f"wrote {r.n_valid} held-out examples to {escape(r.valid_path)}")
