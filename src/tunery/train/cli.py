"""`tunery train` and `tunery export`: local fine-tuning without the server."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from tunery.errors import InvalidRequest

console = Console(stderr=True)


def _auto_int(value: str, name: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"--{name} must be 'auto' or an integer, got {value!r}", param=name) from None


def _auto_float(value: str, name: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise InvalidRequest(f"--{name} must be 'auto' or a number, got {value!r}", param=name) from None


def train_command(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Base model name, alias or directory."),
    training_file: Path = typer.Option(..., "--training-file", "-t", help="Training JSONL (chat or prompt/completion)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output directory (checkpoints/, final/)."),
    validation_file: Path | None = typer.Option(None, "--validation-file", "-v", help="Validation JSONL."),
    n_epochs: str = typer.Option("auto", "--n-epochs", help="auto or an integer."),
    batch_size: str = typer.Option("auto", "--batch-size", help="auto or an integer."),
    learning_rate_multiplier: str = typer.Option(
        "auto", "--learning-rate-multiplier", help="auto or a number; multiplies the method's base rate "
        "(LoRA 2e-4, full 1e-5)."),
    method: str = typer.Option("lora", "--method", help="lora or full."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank r (alpha = 2r)."),
    lora_layers: str = typer.Option("auto", "--lora-layers",
                                    help="auto, all, or N: LoRA on the model's top N layers (auto: all today; "
                                         "the upper half trains ~1.6x faster)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for data order and initialisation."),
    max_length: int | None = typer.Option(None, "--max-length", help="Truncate examples to this many tokens."),
    resume_from: Path | None = typer.Option(None, "--resume-from",
                                            help="A checkpoints/step-N or resume/ dir to continue from."),
    precision: str = typer.Option("auto", "--precision",
                                  help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16 (autocast)."),
) -> None:
    """Fine-tune a model locally on a JSONL file (the server's worker runs the same code)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tunery.settings import get_settings
    from tunery.train import TrainCallbacks, TrainConfig, train

    compute = get_settings().compute
    config = TrainConfig(
        model=model, training_file=training_file, output_dir=output, validation_file=validation_file,
        method=method, n_epochs=_auto_int(n_epochs, "n-epochs"), batch_size=_auto_int(batch_size, "batch-size"),
        learning_rate_multiplier=_auto_float(learning_rate_multiplier, "learning-rate-multiplier"),
        lora_rank=lora_rank, lora_layers=lora_layers if lora_layers in ("auto", "all") else
        _auto_int(lora_layers, "lora-layers"), seed=seed, max_length=max_length, resume_from=resume_from, precision=precision,
        device=compute.device, num_threads=compute.num_threads, processes=compute.train_processes or "auto")

    progress = Progress(
        TextColumn("[bold]step[/bold]"), MofNCompleteColumn(), BarColumn(),
        TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  {task.fields[tps]} tok/s"),
        TimeRemainingColumn(), console=console, transient=False)

    class CliCallbacks(TrainCallbacks):
        task = None

        def on_event(self, level: str, message: str) -> None:
            style = {"warn": "yellow", "error": "red"}.get(level, "dim")
            progress.console.print(f"[{style}]{message}[/{style}]")

        def on_resolved(self, hp: dict) -> None:
            progress.console.print(
                f"epochs {hp['n_epochs']}, batch size {hp['batch_size']}, learning rate {hp['learning_rate']:.2e} "
                f"(multiplier {hp['learning_rate_multiplier']}), seed {hp['seed']}, {hp['total_steps']} steps, "
                f"{hp['device']} {hp['precision']}, ~{hp['estimated_seconds']:.0f}s")
            self.task = progress.add_task("train", total=hp["total_steps"], epoch="-", loss="-", tps="-")

        def on_metrics(self, d: dict) -> None:
            loss = f"{d['train_loss']:.3f}"
            if "valid_loss" in d:
                loss += f" (valid {d['valid_loss']:.3f})"
            progress.update(self.task, completed=d["step"], epoch=d["epoch"], loss=loss,
                            tps=f"{d['tokens_per_second']:.0f}")

    with progress:
        result = train(config, CliCallbacks())
    where = result.model_dir or result.resume_dir or output
    console.print(f"[green]{result.status}[/green]: {result.trained_tokens} trained tokens → {where}")


def export_command(
    directory: Path = typer.Argument(..., help="A run's final/ or checkpoints/step-N directory."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write (default: DIR-merged)."),
    merge: bool = typer.Option(False, "--merge", help="Merge the LoRA adapter into the base weights."),
    gguf: bool = typer.Option(False, "--gguf", help="Write GGUF for llama.cpp (a GGUF LoRA, or a GGUF model)."),
    ollama: bool = typer.Option(False, "--ollama", help="GGUF plus an Ollama Modelfile (FROM + ADAPTER)."),
) -> None:
    """Export a trained model as a standalone Hugging Face directory (--merge), a clean adapter copy,
    or GGUF for llama.cpp / Ollama (--gguf, --ollama)."""
    from tunery.inference.convert import export_gguf
    from tunery.train.export import export_model

    directory = directory.resolve()
    if gguf or ollama:
        out = output or directory.with_name(directory.name + ("-ollama" if ollama else "-gguf"))
        export_gguf(directory, out, ollama=ollama)
        console.print(f"[green]exported[/green] → {out}")
        return
    out = output or directory.with_name(directory.name + ("-merged" if merge else "-export"))
    export_model(directory, out, merge=merge)
    console.print(f"[green]exported[/green] → {out}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("export")(export_command)
