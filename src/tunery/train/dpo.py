"""DPO (direct preference optimisation): the step objective for preference pairs, chosen by the loop.

Loss per pair (Rafailov et al. 2023, the "sigmoid" loss): -log σ(β·[(log π(y_w|x) - log π_ref(y_w|x)) -
(log π(y_l|x) - log π_ref(y_l|x))]), averaged over the pairs of a step; log π(y|x) is the sum of the token
log-probs of the output's tokens only (the same assistant-token masks as SFT, end-of-turn token included).
The step minimises that plus nll_weight × the preferred outputs' negative log-likelihood per token (mean over
the step's preferred-output tokens: TRL's "sft" loss; RPO, Pang et al. 2024; Llama 3's DPO used 0.2). The DPO
term alone only asks that the preferred output gain on the other; when the two share all but an ending, the
cheapest way there is to make the shared end-of-turn unlikely, so the model stops ending its answers (see
config.AUTO_NLL_WEIGHT). The likelihood term keeps the preferred outputs, their ends included, likely.
The chosen and rejected sequences of a micro-batch are packed into one padding-free row with batching.pack and
run through batching.forward_logits, so only output positions reach the vocabulary head.

The reference is frozen, so its log-probs are a fixed number per sequence: they are computed once, before
the first step, from the starting model — for LoRA the same weights with the adapter disabled
(`model.disable_adapter()`), or the starting fine-tuned model when training continues an ft: model; for
full fine-tuning the starting weights. That needs no second copy of the model (not even for full
fine-tuning), costs one forward per sequence per run instead of one per epoch, and is saved in every
checkpoint (reference_logps.json) so a resumed run uses the very same numbers.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import InvalidRequest
from tunery.train.batching import forward_logits, load_encoded, micro_batches, pack
from tunery.train.metric_names import DPO_CHECKPOINT_METRICS, DPO_METRICS
from tunery.train.tokenize import Encoded, encode_preference, truncate

REFERENCE_FILE = "reference_logps.json"


@dataclass
class Pair:
    """One preference pair: prompt + preferred output (chosen) and prompt + non-preferred (rejected)."""

    chosen: Encoded
    rejected: Encoded
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def line(self) -> int:
        return self.chosen.line

    @property
    def n_trained(self) -> int:  # a pair trains only if both outputs keep tokens after truncation
        return min(self.chosen.n_trained, self.rejected.n_trained)

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

    @property
    def original_length(self) -> int:
        return max(self.chosen.original_length, self.rejected.original_length)


def encode_pair(tokenizer, example) -> Pair:
    return Pair(*encode_preference(tokenizer, example))


def truncate_pair(pair: Pair, max_length: int) -> Pair:
    """max_length bounds each sequence, as for SFT examples (a pair is two of them)."""
    if len(pair.chosen) <= max_length and len(pair.rejected) <= max_length:
        return pair
    return Pair(truncate(pair.chosen, max_length), truncate(pair.rejected, max_length))


def sequence_logps(model, pairs: list[Pair], run):
    """(chosen, rejected) summed output-token log-probs [n] of one packed micro-batch, the chosen outputs'
    summed negative log-likelihood (a tensor, for the likelihood term), and the number of chosen-output tokens
    predicted exactly (argmax) and their count."""
    import torch
    import torch.nn.functional as F

    seqs = [s for p in pairs for s in (p.chosen, p.rejected)]
    pk = pack(seqs, run.device)
    logits = forward_logits(model, pk, run.autocast)
    token_logps = -F.cross_entropy(logits, pk.targets, reduction="none")
    per_seq = torch.zeros(len(seqs), device=token_logps.device, dtype=token_logps.dtype)
    per_seq = per_seq.index_add(0, pk.seq, token_logps)
    chosen = per_seq[0::2]
    with torch.no_grad():
        on_chosen = pk.seq % 2 == 0
        correct = int(((logits.argmax(-1) == pk.targets) & on_chosen).sum())
        n_chosen = int(on_chosen.sum())
    return chosen, per_seq[1::2], -chosen.sum(), correct, n_chosen


def n_chosen_targets(pairs: list[Pair]) -> int:
    """The preferred outputs' trained tokens (what the likelihood term averages over)."""
    return sum(sum(p.chosen.loss_mask[1:]) for p in pairs)


class Dpo:
    """The DPO step objective (see the module docstring); metrics are per pair, averaged over a batch."""

    checkpoint_keys = DPO_CHECKPOINT_METRICS  # the loop adds the train_/valid_/full_valid_ prefixes

    def __init__(self):
        self.beta = 0.1
        self.nll_weight = 0.0
        self.train_set: list[Pair] = []
        self.valid_set: list[Pair] = []

    def load(self, path, tokenizer, max_length: int, callbacks, what: str) -> list[Pair]:
        return load_encoded(path, tokenizer, max_length, callbacks, what, encode=encode_pair, cut=truncate_pair)

    def start(self, model, hp: dict, train_set: list[Pair], valid_set: list[Pair], resume_dir, run) -> None:
        self.beta = float(hp["beta"])
        self.nll_weight = float(hp.get("nll_weight") or 0.0)  # checkpoints from before it: plain DPO
        self.train_set, self.valid_set = train_set, valid_set
        if resume_dir is not None and (Path(resume_dir) / REFERENCE_FILE).exists():
            self._load_reference(Path(resume_dir) / REFERENCE_FILE)
            return
        if resume_dir is not None and (run.method != "lora" or run.init_from is not None):
            # Only a fresh adapter's reference (the untouched base) can be rebuilt from resumed weights.
            raise InvalidRequest(f"{resume_dir} has no {REFERENCE_FILE}, so the DPO reference cannot be "
                                 "restored; resume from a checkpoint written by this version", param="resume_from")
        # A fresh LoRA adapter starts equal to the base (B = 0), but resumed ones do not: disable it explicitly.
        disabled = run.method == "lora" and run.init_from is None
        self._compute_reference(model, train_set + valid_set, run, disabled)

    def _compute_reference(self, model, pairs: list[Pair], run, adapter_disabled: bool) -> None:
        import torch

        was_training = model.training
        model.eval()
        ctx = model.disable_adapter() if adapter_disabled else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            for group in micro_batches(pairs, run.max_tokens):
                c, r, _, _, _ = sequence_logps(model, group, run)
                for p, lc, lr in zip(group, c.tolist(), r.tolist()):
                    p.ref_chosen, p.ref_rejected = lc, lr
        if was_training:
            model.train()

    def save(self, path: Path) -> None:
        data = {"train": [[p.ref_chosen, p.ref_rejected] for p in self.train_set],
                "valid": [[p.ref_chosen, p.ref_rejected] for p in self.valid_set]}
        tmp = Path(path) / (REFERENCE_FILE + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(Path(path) / REFERENCE_FILE)

    def _load_reference(self, file: Path) -> None:
        data = json.loads(file.read_text())
        for name, pairs in (("train", self.train_set), ("valid", self.valid_set)):
            if len(data.get(name, [])) != len(pairs):
                raise InvalidRequest(f"{file} holds reference log-probs for {len(data.get(name, []))} {name} "
                                     f"pairs, but the file now has {len(pairs)}; resume with the same data",
                                     param="resume_from")
            for p, (c, r) in zip(pairs, data[name]):
                p.ref_chosen, p.ref_rejected = c, r

    def _run(self, model, batch: list[Pair], run, backward: bool) -> dict:
        import torch
        import torch.nn.functional as F

        n = len(batch)
        n_targets = max(1, n_chosen_targets(batch))
        tot = dict.fromkeys(("loss",) + DPO_METRICS, 0.0)
        nll_sum = 0.0
        correct = n_chosen = 0
        for group in micro_batches(batch, run.max_tokens):
            pol_c, pol_r, nll, c, k = sequence_logps(model, group, run)
            ref_c = torch.tensor([p.ref_chosen for p in group], dtype=pol_c.dtype, device=pol_c.device)
            ref_r = torch.tensor([p.ref_rejected for p in group], dtype=pol_r.dtype, device=pol_r.device)
            chosen_rewards = self.beta * (pol_c - ref_c)
            rejected_rewards = self.beta * (pol_r - ref_r)
            losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
            if backward:
                (losses.sum() / n + self.nll_weight * nll / n_targets).backward()
            with torch.no_grad():
                tot["loss"] += float(losses.sum())
                nll_sum += float(nll)
                tot["reward_accuracy"] += float((chosen_rewards > rejected_rewards).sum())
                tot["reward_margin"] += float((chosen_rewards - rejected_rewards).sum())
                tot["chosen_rewards"] += float(chosen_rewards.sum())
                tot["rejected_rewards"] += float(rejected_rewards.sum())
                tot["chosen_logps"] += float(pol_c.sum())
                tot["rejected_logps"] += float(pol_r.sum())
            correct += c
            n_chosen += k
        out = {k: v / max(1, n) for k, v in tot.items()}
        out["chosen_nll"] = nll_sum / n_targets
        out["mean_token_accuracy"] = correct / max(1, n_chosen)  # on the preferred outputs, as TRL reports it
        return out

    def step(self, model, batch: list[Pair], run) -> dict:
        return self._run(model, batch, run, backward=True)

    def evaluate(self, model, pairs: list[Pair], run) -> dict:
        import torch

        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = self._run(model, pairs, run, backward=False)
        if was_training:
            model.train()
        return out
