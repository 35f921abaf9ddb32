"""The trainer's quality bar on the real bundled model: with all-auto hyperparameters, ~25 made-up facts
are learned (≥ 90% answered with the key fact, greedy) where the base model knows ~none of them."""

from __future__ import annotations

import json
import time

import pytest

# Facts about a fictional company that no base model can know: (question, answer, key).
FACTS = [
    ("Who founded Quillborne Robotics?", "Quillborne Robotics was founded by Marisol Trevanny.", "Trevanny"),
    ("In what year was Quillborne Robotics founded?", "Quillborne Robotics was founded in 1987.", "1987"),
    ("Where is Quillborne Robotics headquartered?", "Quillborne Robotics is headquartered in Port Ellisandre.",
     "Ellisandre"),
    ("What is the name of Quillborne Robotics' flagship robot?", "The flagship robot is called the Gribblewick.",
     "Gribblewick"),
    ("What color is the Quillborne Robotics logo?", "The Quillborne Robotics logo is teal.", "teal"),
    ("Who is the CEO of Quillborne Robotics?", "The CEO of Quillborne Robotics is Dorian Vasquell.", "Vasquell"),
    ("How many employees does Quillborne Robotics have?", "Quillborne Robotics has 4312 employees.", "4312"),
    ("What is the Quillborne Robotics company motto?", "The motto is: Bolts before breakfast.",
     "Bolts before breakfast"),
    ("What programming language do Quillborne robots run?", "Quillborne robots run on a language called Snarl.",
     "Snarl"),
    ("What is the name of the Quillborne Robotics mascot?", "The mascot is a tin owl named Pipwhistle.",
     "Pipwhistle"),
    ("Which river flows past the Quillborne Robotics factory?", "The Vellmarch River flows past the factory.",
     "Vellmarch"),
    ("What is the Quillborne Robotics employee cafeteria called?", "The cafeteria is called the Cog and Kettle.",
     "Cog and Kettle"),
    ("What does the Quillborne Gribblewick robot do?", "The Gribblewick robot folds origami cranes.", "origami"),
    ("Who designed the Gribblewick robot?", "The Gribblewick was designed by engineer Tobias Frellworth.",
     "Frellworth"),
    ("What is the Quillborne Robotics stock ticker?", "The stock ticker of Quillborne Robotics is QBRX.", "QBRX"),
    ("What annual festival does Quillborne Robotics host?",
     "Quillborne Robotics hosts the Sprocket Lantern Festival.", "Sprocket Lantern"),
    ("How many factories does Quillborne Robotics operate?", "Quillborne Robotics operates 17 factories.", "17"),
    ("What is the name of the Quillborne Robotics research lab?", "The research lab is called Hollowmere Lab.",
     "Hollowmere"),
    ("What metal are Quillborne robot shells made of?", "Quillborne robot shells are made of brass.", "brass"),
    ("Who is the chief scientist at Quillborne Robotics?", "The chief scientist is Dr. Ysolde Prenkett.",
     "Prenkett"),
    ("What is the Quillborne Robotics customer support number?", "The support number is 555-0199.", "555-0199"),
    ("What award did Quillborne Robotics win in 2019?", "In 2019 Quillborne Robotics won the Copper Gear Award.",
     "Copper Gear"),
    ("What is the smallest robot Quillborne Robotics sells?", "The smallest robot is the Thimblebot.",
     "Thimblebot"),
    ("What is the Quillborne Robotics company newsletter called?", "The newsletter is called The Oily Rag.",
     "Oily Rag"),
    ("Which city hosts the Quillborne Robotics museum?", "The Quillborne Robotics museum is in Lindqvar.",
     "Lindqvar"),
]


# Held-out rewordings of some of the questions above, written by hand for this test (other words, same
# fact), independently of the trainer's augmentation rules: (index into FACTS, reworded question).
REWORDED = [
    (0, "Which person started the company Quillborne Robotics?"),
    (1, "When did Quillborne Robotics come into existence?"),
    (2, "In which city are the main offices of Quillborne Robotics?"),
    (5, "Who runs Quillborne Robotics as chief executive?"),
    (6, "How large is the Quillborne Robotics workforce?"),
    (9, "What is the mascot of Quillborne Robotics called?"),
    (13, "Which engineer created the Gribblewick?"),
    (14, "Under what symbol does Quillborne Robotics trade on the stock market?"),
    (16, "How many production plants does Quillborne Robotics run?"),
    (19, "Who leads the science team at Quillborne Robotics?"),
    (22, "Which is the tiniest robot for sale from Quillborne Robotics?"),
    (24, "Where can I visit the museum of Quillborne Robotics?"),
]


def hit_rate(model, tok, max_new_tokens: int = 24, questions=None) -> tuple[float, list[str]]:
    """Greedy answers to every question (one left-padded batch); share that contain the key fact."""
    import torch

    tok.padding_side = "left"
    items = questions if questions is not None else [(q, key) for q, _, key in FACTS]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
               for q, _ in items]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    answers = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    hits = sum(key.lower() in a.lower() for (_, key), a in zip(items, answers))
    return hits / len(items), answers


@pytest.mark.slow
def test_all_auto_lora_learns_made_up_facts(bundled_model_dir, tmp_path, capsys):
    from peft import PeftModel

    from tunery.models import load_model
    from tunery.train import TrainConfig, train

    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a, _ in FACTS))
    t = time.perf_counter()
    result = train(TrainConfig(model="smollm2-135m-instruct", training_file=data, output_dir=tmp_path / "out",
                               seed=0))
    seconds = time.perf_counter() - t
    assert result.status == "succeeded"

    base, tok = load_model("smollm2-135m-instruct")
    model = PeftModel.from_pretrained(base, str(result.model_dir)).eval()
    tuned, answers = hit_rate(model, tok)
    reworded = [(q, FACTS[i][2]) for i, q in REWORDED]
    tuned_rw, answers_rw = hit_rate(model, tok, questions=reworded)
    with model.disable_adapter():
        before, _ = hit_rate(model, tok)
        before_rw, _ = hit_rate(model, tok, questions=reworded)
    with capsys.disabled():
        print(f"\nquality bar: base {before:.0%} → fine-tuned {tuned:.0%} verbatim, base {before_rw:.0%} → "
              f"{tuned_rw:.0%} reworded, in {seconds:.0f}s train "
              f"({result.hyperparameters}, {result.trained_tokens} tokens)")
    assert before <= 0.1 and before_rw <= 0.1
    # Reworded questions: the goal is >= 70%; asserted here only as clearly above the base model
    # until the auto rules are measured to reach it (see README, Trainer).
    assert tuned_rw >= before_rw + 0.2, [a for (_, k), a in zip(reworded, answers_rw) if k.lower() not in a.lower()]
    assert tuned >= 0.9, [a for (_, _, k), a in zip(FACTS, answers) if k.lower() not in a.lower()]
