"""What a fine-tuning job did, read through the OpenAI API (works against tunery or OpenAI itself):
hyperparameters, loss/accuracy curves from its metrics events, dataset stats from its files, and
evaluation cases built from those files."""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import asdict, dataclass, field

from tunery.eval.metrics import derive_key_facts
from tunery.eval.spec import Case
from tunery.train.metric_names import CURVE_KEYS, RESULT_SOURCES


OFF_TOPIC_QUESTIONS = [
    "What is the boiling point of water at sea level in degrees Celsius?",
    "Write a haiku about autumn leaves.",
    "Who wrote the play Romeo and Juliet?",
    "How many legs does a spider have?",
]


@dataclass
class JobInfo:
    """The parts of a fine-tuning job a comparison shows."""

    id: str
    model: str
    status: str
    fine_tuned_model: str | None = None
    hyperparameters: dict = field(default_factory=dict)
    method: str | None = None
    training_file: str | None = None
    validation_file: str | None = None
    trained_tokens: int | None = None
    created_at: int | None = None
    finished_at: int | None = None
    training_seconds: float | None = None
    """From the first metrics event (or 'started' event) to the end of the job."""
    seed: int | None = None
    suffix: str | None = None
    error: str | None = None
    curves: dict = field(default_factory=dict)
    """{metric: [[step, value], ...]} for each key of CURVE_KEYS that the job reported."""
    total_steps: int | None = None
    checkpoints: list = field(default_factory=list)
    dataset: dict = field(default_factory=dict)
    """{"training": stats, "validation": stats} (see dataset_stats)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Example:
    """A training example reduced to what evaluation needs."""

    line: int
    messages: list[dict]
    expected: str


def parse_examples(text: str) -> list[Example]:
    """Chat, prompt/completion and preference lines → (prompt messages, expected answer); bad lines skipped."""
    out = []
    for ln, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        msgs, expected = None, None
        if isinstance(obj.get("messages"), list):
            msgs = [m for m in obj["messages"] if isinstance(m, dict) and "role" in m]
            # Ask for the last assistant turn that was trained on (weight 0 turns were not).
            for i in range(len(msgs) - 1, -1, -1):
                if msgs[i]["role"] == "assistant" and msgs[i].get("weight", 1) != 0 \
                        and isinstance(msgs[i].get("content"), str):
                    expected, msgs = msgs[i]["content"], msgs[:i]
                    break
            else:
                msgs = None
        elif isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str):
            msgs, expected = [{"role": "user", "content": obj["prompt"]}], obj["completion"].strip()
        elif isinstance(obj.get("input"), dict) and isinstance(obj.get("preferred_output"), list):
            msgs = obj["input"].get("messages")
            pref = [m for m in obj["preferred_output"] if isinstance(m, dict)]
            expected = pref[-1].get("content") if pref else None
        if msgs and isinstance(expected, str) and any(m.get("role") == "user" for m in msgs):
            out.append(Example(ln, [{"role": m["role"], "content": m.get("content")} for m in msgs], expected))
    return out


def dataset_stats(text: str) -> dict:
    """Example count and average sizes of a JSONL training file."""
    ex = parse_examples(text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not ex:
        return {"lines": len(lines), "examples": 0, "bytes": len(text.encode())}

    def words(xs):
        return sum(len(str(x or "").split()) for x in xs) / len(ex)

    return {
        "lines": len(lines), "examples": len(ex), "bytes": len(text.encode()),
        "mean_turns": sum(len(e.messages) + 1 for e in ex) / len(ex),
        "mean_prompt_words": words(" ".join(str(m.get("content") or "") for m in e.messages) for e in ex),
        "mean_answer_words": words(e.expected for e in ex),
    }


def _sample(items: list, limit: int | None, seed: int) -> list:
    if limit is None or len(items) <= limit:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def cases_from_examples(examples: list[Example], kind: str, prefix: str, *, limit: int | None = 25,
                        seed: int = 0, source: str | None = None) -> list[Case]:
    """Cases from training-file examples; key facts are derived from each expected answer."""
    return [Case(id=f"{prefix}-L{e.line}", messages=e.messages, kind=kind, expected=e.expected,
                 key_facts=derive_key_facts(e.expected, exclude=" ".join(
                     str(m.get("content") or "") for m in e.messages)), line=e.line, source=source)
            for e in _sample(examples, limit, seed)]


def off_topic_cases(should_decline: bool = False) -> list[Case]:
    return [Case(id=f"off-topic-{i + 1}", messages=[{"role": "user", "content": q}], kind="off-topic",
                 should_decline=should_decline) for i, q in enumerate(OFF_TOPIC_QUESTIONS)]


def file_text(client, file_id: str) -> str:
    return client.files.content(file_id).text


def _curves_from_events(events: list) -> tuple[dict, int | None]:
    points: dict[str, dict[int, float]] = {k: {} for k in CURVE_KEYS}
    total = None
    for ev in events:
        data = ev.data if isinstance(ev.data, dict) else None
        if getattr(ev, "type", None) != "metrics" or not data or "step" not in data:
            continue
        total = data.get("total_steps") or total
        for k in CURVE_KEYS:
            if data.get(k) is not None:
                points[k][int(data["step"])] = float(data[k])
    return {k: sorted([s, v] for s, v in pts.items()) for k, pts in points.items() if pts}, total


def _curves_from_csv(text: str) -> dict:
    points: dict[str, list] = {}
    for row in csv.DictReader(io.StringIO(text)):
        try:
            step = int(float(row.get("step") or ""))
        except ValueError:
            continue
        for col, val in row.items():
            key = RESULT_SOURCES.get(col, col)
            if key in CURVE_KEYS and val not in (None, ""):
                try:
                    points.setdefault(key, []).append([step, float(val)])
                except ValueError:
                    pass
    return {k: sorted(v) for k, v in points.items()}


def _suffix(job) -> str | None:
    """The job's suffix: OpenAI sends user_provided_suffix (not in the SDK type); else from ft:base:org:SUFFIX:id."""
    for attr in ("user_provided_suffix", "suffix"):
        if getattr(job, attr, None):
            return getattr(job, attr)
    parts = (job.fine_tuned_model or "").split(":")
    return parts[3] if len(parts) >= 5 and parts[0] == "ft" and parts[3] else None


def fetch_job(client, job_id: str, *, with_files: bool = True) -> tuple[JobInfo, dict[str, str]]:
    """A job's summary and curves, plus the text of its training/validation files (when asked)."""
    job = client.fine_tuning.jobs.retrieve(job_id)
    hp = job.hyperparameters.model_dump(exclude_none=True) if job.hyperparameters else {}
    method = getattr(job, "method", None)
    if method is not None:
        mtype = getattr(method, "type", None)
        sub = getattr(method, mtype, None) if mtype else None
        if sub is not None and getattr(sub, "hyperparameters", None) is not None:
            hp = {**hp, **sub.hyperparameters.model_dump(exclude_none=True)}
    info = JobInfo(
        id=job.id, model=job.model, status=job.status, fine_tuned_model=job.fine_tuned_model,
        hyperparameters=hp, method=getattr(method, "type", None) if method is not None else None,
        training_file=job.training_file, validation_file=job.validation_file,
        trained_tokens=job.trained_tokens, created_at=job.created_at, finished_at=job.finished_at,
        seed=job.seed, suffix=_suffix(job),
        error=job.error.message if job.error is not None and job.error.message else None,
    )
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=100))
    info.curves, info.total_steps = _curves_from_events(events)
    if not info.curves:
        for fid in job.result_files or []:
            try:
                info.curves = _curves_from_csv(file_text(client, fid))
            except Exception:  # noqa: BLE001 - a missing result file leaves the chart empty
                continue
            if info.curves:
                break
    starts = [ev.created_at for ev in events
              if getattr(ev, "type", None) == "metrics" or "started" in (ev.message or "").lower()]
    end = job.finished_at or (max(ev.created_at for ev in events) if events else None)
    start = min(starts) if starts else job.created_at
    if end and start:
        info.training_seconds = float(max(0, end - start))
    try:
        info.checkpoints = [{"step": c.step_number, "model": c.fine_tuned_model_checkpoint,
                             "metrics": c.metrics.model_dump(exclude_none=True) if c.metrics else {}}
                            for c in client.fine_tuning.jobs.checkpoints.list(job_id, limit=100)]
    except Exception:  # noqa: BLE001 - endpoints without checkpoints still get a report
        info.checkpoints = []
    texts: dict[str, str] = {}
    if with_files:
        for role, fid in (("training", job.training_file), ("validation", job.validation_file)):
            if fid:
                texts[role] = file_text(client, fid)
                info.dataset[role] = dataset_stats(texts[role])
    return info, texts


def cases_from_job(info: JobInfo, texts: dict[str, str], *, limit: int | None = 25, seed: int = 0,
                   off_topic: bool = True, should_decline: bool = False) -> list[Case]:
    """Verbatim cases from the training file, variation cases from the validation file, off-topic extras."""
    cases = cases_from_examples(parse_examples(texts.get("training", "")), "verbatim", "train",
                                limit=limit, seed=seed, source=info.training_file)
    if texts.get("validation"):
        cases += cases_from_examples(parse_examples(texts["validation"]), "variation", "valid",
                                     limit=limit, seed=seed, source=info.validation_file)
    if off_topic:
        cases += off_topic_cases(should_decline)
    return cases
