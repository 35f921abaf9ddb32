"""The quickstart's demo dataset: a small travel guide for Chiang Mai attractions, written for tunery.

The places are real; the specific details (hours, prices, distances, stall names, the "Lanna tip"
house style) are invented for the demo, so that a short fine-tune visibly changes the model's answers.
Not travel advice.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

TRAIN_FILE = "chiang_mai_train.jsonl"
VALIDATION_FILE = "chiang_mai_validation.jsonl"
SYSTEM_PROMPT = "You are Lanna Guide, a friendly, concise travel guide for Chiang Mai, Thailand."

# Asked of the base model and of the fine-tuned model, side by side, at the end of the quickstart.
QUESTIONS = (
    "What time does the Sunday Walking Street open?",
    "How do I get to Wat Phra That Doi Suthep?",
    "What should I eat in Chiang Mai?",
)

# The invented facts of the three answers (as the training file states them): the fine-tuned model must
# state every one of them; the base model cannot know them.
QUESTION_KEYS = (
    ("4 pm", "10:30 pm", "Tha Phae Gate"),
    ("70 baht", "35 minutes"),
    ("Baan Nok Kitchen", "60 baht"),
)


def read_text(name: str) -> str:
    """The bundled JSONL text of TRAIN_FILE or VALIDATION_FILE."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def write_dataset(directory: Path) -> tuple[Path, Path]:
    """Write the train and validation JSONL files into directory; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in (TRAIN_FILE, VALIDATION_FILE):
        path = directory / name
        path.write_text(read_text(name), encoding="utf-8")
        out.append(path)
    return out[0], out[1]
