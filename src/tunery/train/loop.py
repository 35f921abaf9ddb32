"""The training loop: load → tokenize+mask → (forward, masked loss, backward, step, log, checkpoint)*.

Batches are padding-free and only trained positions reach the vocabulary head (batching.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import InvalidRequest
from tunery.train import checkpoint as ckpt
from tunery.train.batching import (Packed, epoch_order, forward_logits, load_encoded, micro_batches, pack,
                                   read_file_examples)
from tunery.train.callbacks import CheckpointInfo, TrainCallbacks, TrainResult
from tunery.train.config import (BASE_LEARNING_RATE, EARLY_STOP_PATIENCE, TrainConfig, label_tokens,
                                 resolve_augment, resolve_hyperparameters, resolve_label_smoothing,
                                 resolve_lora_layers, resolve_neftune, resolve_objective, resolve_paraphrase,
                                 resolve_replay)
from tunery.train.metric_names import SFT_METRICS, per_split
from tunery.train.tokenize import Encoded

# On a CPU, matmuls over a few hundred tokens already run at full speed, so larger micro-batches only add
# activation memory (~3 MB per token for the 135M model with LoRA): accumulate gradients beyond this.
CPU_MICRO_BATCH_TOKENS = 512
DEFAULT_CPU_THROUGHPUT = 150.0  # trained tokens/s for the bundled model, LoRA, this class of CPU


def forward_loss(model, p: Packed, autocast, exact: list | None = None, labels: list[int] | None = None,
                 smoothing: float = 0.0):
    """(sum of token losses, number of correct argmax predictions) over the trained positions; with `exact`,
    also appends per packed example whether every one of its trained tokens was the argmax. With `labels`
    and `smoothing`, a position whose target is a label has `smoothing` of its target spread over the other
    labels (label_tokens)."""
    import torch
    import torch.nn.functional as F

    logits = forward_logits(model, p, autocast)
    loss = F.cross_entropy(logits, p.targets, reduction="sum")
    if labels and smoothing:
        loss = loss + smoothing * _label_spread(logits, p.targets, labels)
    with torch.no_grad():
        hit = logits.argmax(-1) == p.targets
        correct = int(hit.sum())
        if exact is not None:
            exact.extend(_all_hit_per_example(hit, p.seq, int(p.seq.max()) + 1 if p.seq.numel() else 0))
    return loss, correct


def _label_spread(logits, targets, labels: list[int]):
    """Σ over label positions of (mean NLL of the other labels − NLL of the target label): added with weight ε
    to the plain loss it makes the target (1−ε) on the label and ε shared by the other labels."""
    import torch

    lab = torch.tensor(labels, device=logits.device)
    at = torch.isin(targets, lab)
    if not bool(at.any()):
        return logits.new_zeros(())
    lp = logits[at].log_softmax(-1)[:, lab]  # [n, C]
    which = (targets[at][:, None] == lab[None, :]).float().argmax(1)
    nll_true = -lp.gather(1, which[:, None]).squeeze(1)
    nll_others = -(lp.sum(1) + nll_true) / (len(labels) - 1)
    return (nll_others - nll_true).sum()


def _all_hit_per_example(hit, seq, n: int) -> list[bool]:
    import torch

    misses = torch.zeros(n, dtype=torch.long).index_add(0, seq.cpu(), (~hit).long().cpu())
    return [bool(v == 0) for v in misses.tolist()]


def evaluate(model, examples: list[Encoded], max_tokens: int, device, autocast,
             flags: list | None = None, ranks=None) -> tuple[float, float]:
    """(mean token loss, mean token accuracy) over examples, no gradients. With `flags`, also appends per
    example whether greedy decoding gives back its trained tokens: every trained token is the argmax given
    the tokens before it (teacher forcing; by induction that is exactly greedy decoding). With `ranks`
    (a distributed.Group) each rank evaluates its slice and every rank gets the whole set's result."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    total = correct = 0
    loss_sum = 0.0
    mine_flags: list[bool] = []
    mine, pad = _my_micro_batches(examples, max_tokens, ranks)
    with torch.no_grad():
        for _ in range(pad):  # sharded weights: as many passes as the busiest rank (Group.micro_batches)
            forward_logits(model, pack(examples[:1], device), autocast)
        for group in mine:
            p = pack(group, device)
            logits = forward_logits(model, p, autocast)
            loss_sum += float(F.cross_entropy(logits, p.targets, reduction="sum"))
            hit = logits.argmax(-1) == p.targets
            correct += int(hit.sum())
            total += int(p.targets.numel())
            if flags is not None:
                mine_flags.extend(_all_hit_per_example(hit, p.seq, len(group)))
    if was_training:
        model.train()
    if ranks:
        loss_sum, correct, total = ranks.sum([loss_sum, correct, total])
        if flags is not None:
            mine_flags = ranks.gather_flags(mine_flags, len(examples))
    if flags is not None:
        flags.extend(mine_flags)
    return loss_sum / max(1, total), correct / max(1, total)


def _my_micro_batches(items: list, max_tokens: int, ranks) -> tuple[list, int]:
    """This process's micro-batches of items and its empty passes (see distributed.Group.micro_batches)."""
    def split(xs):
        return micro_batches(xs, max_tokens)

    return ranks.micro_batches(items, split) if ranks else (split(items), 0)


def reproduced(model, examples: list[Encoded], run) -> list[bool]:
    """Per example: does greedy decoding give back its trained tokens (see evaluate)."""
    flags: list[bool] = []
    evaluate(model, examples, run.max_tokens, run.device, run.autocast, flags, run.ranks)
    return flags


class Supervised:
    """The SFT step objective: mean token cross-entropy over the trained tokens of a batch.

    The loop asks its objective (chosen once, by method type: this or dpo.Dpo) to load the data, run one
    step's forward/backward and evaluate; metrics come back unprefixed and the loop adds train_/valid_."""

    checkpoint_keys = SFT_METRICS

    def __init__(self):
        self.labels: list[int] = []
        self.smoothing = 0.0
        self.exact: dict[int, bool] = {}
        """id(example) → whether its last training pass had every trained token as the argmax (before that
        step's update, with NEFTune noise): a free, slightly pessimistic stand-in for an evaluation pass."""

    def load(self, path, tokenizer, max_length: int, callbacks: TrainCallbacks, what: str) -> list[Encoded]:
        return load_encoded(path, tokenizer, max_length, callbacks, what)

    def start(self, model, hp: dict, train_set, valid_set, resume_dir, run) -> None:
        """Called once the model is built, before the first step: classifier data's label smoothing."""
        self.smoothing = float(hp.get("label_smoothing") or 0.0)
        self.labels = data_labels(train_set) if self.smoothing else []

    def save(self, path: Path) -> None:
        """Called for every checkpoint/resume dir before its trainer state is written."""

    def step(self, model, batch: list[Encoded], run) -> dict:
        """Forward and backward over the batch (with several ranks: this rank's slice of it, gradients then
        summed over the ranks); the loss is the mean over the whole batch's trained tokens."""
        n_target = sum(e.n_trained - (e.loss_mask[0] if e.loss_mask else 0) for e in batch)
        loss_sum = 0.0
        correct = 0
        exact: list[bool] = []
        mine, pad = _my_micro_batches(batch, run.max_tokens, run.ranks)
        for _ in range(pad):  # sharded weights: as many passes as the busiest rank, these adding nothing
            (forward_loss(model, pack(batch[:1], run.device), run.autocast)[0] * 0.0).backward()
        for group in mine:
            p = pack(group, run.device)
            loss, c = forward_loss(model, p, run.autocast, exact, self.labels, self.smoothing)
            (loss / max(1, n_target)).backward()
            loss_sum += float(loss.detach())
            correct += c
        if run.ranks:
            run.ranks.sync_gradients(run.params)
            loss_sum, correct = run.ranks.sum([loss_sum, correct])
            exact = run.ranks.gather_flags(exact, len(batch))
        self.exact.update(zip(map(id, batch), exact))
        return {"loss": loss_sum / max(1, n_target), "mean_token_accuracy": correct / max(1, n_target)}

    def evaluate(self, model, examples: list[Encoded], run) -> dict:
        loss, acc = evaluate(model, examples, run.max_tokens, run.device, run.autocast, ranks=run.ranks)
        return {"loss": loss, "mean_token_accuracy": acc}


def data_labels(examples: list[Encoded]) -> list[int]:
    """The label tokens when the examples are classifier data (config.label_tokens), else []."""
    firsts, counts = [], []
    for e in examples:
        t = next((i for i in range(1, len(e)) if e.loss_mask[i]), None)
        firsts.append(e.input_ids[t] if t is not None else -1)
        counts.append(sum(e.loss_mask[1:]))
    return label_tokens(firsts, counts)


@dataclass
class RunContext:
    """What an objective needs to know about the run to pack and run its batches."""

    device: str
    autocast: object
    max_tokens: int
    method: str  # lora | full
    init_from: Path | None
    ranks: object = None  # distributed.Group when the run is split over several processes
    params: list | None = None  # the trainable parameters (their gradients are summed over the ranks)


def make_objective(name: str):
    if name == "dpo":
        from tunery.train.dpo import Dpo

        return Dpo()
    return Supervised()


# --- schedule ---------------------------------------------------------------------------------

def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warmup over ~3% of steps (at least 1), then linear decay to 10% of the peak."""
    warm = max(1, min(20, round(0.03 * total)))
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return peak * (1.0 - 0.9 * frac)


# --- model ------------------------------------------------------------------------------------

def _precision(config: TrainConfig, device: str):
    import torch

    want = config.precision
    if want not in ("auto", "fp32", "bf16"):
        raise InvalidRequest(f"precision must be auto, fp32 or bf16, got {want!r}", param="precision")
    if want == "auto":
        want = "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    if want == "bf16":
        dev_type = "cuda" if device.startswith("cuda") else "cpu"
        return "bf16", lambda: torch.autocast(device_type=dev_type, dtype=torch.bfloat16)
    return "fp32", contextlib.nullcontext


@contextlib.contextmanager
def quiet_hf():
    """No transformers progress bars or deprecation chatter in the middle of our own progress output."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _build_model(config: TrainConfig, hp: dict, device: str, resume_dir: Path | None):
    with quiet_hf():
        return _build_model_inner(config, hp, device, resume_dir)


def _build_model_inner(config: TrainConfig, hp: dict, device: str, resume_dir: Path | None):
    import torch

    from tunery.models import load_model

    weights_from = resume_dir or (Path(config.init_from) if config.init_from else None)
    if config.method == "full" and weights_from is not None:
        model, tok = load_model(str(weights_from), device=device)
    else:
        model, tok = load_model(config.model, device=device)
    model.config.use_cache = False
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        torch.manual_seed(hp["seed"])  # LoRA A matrices are random; same seed → same start
        n_layers = model.config.num_hidden_layers
        top = int(hp.get("lora_layers") or n_layers)
        where: dict = {"target_modules": "all-linear"}
        if top < n_layers:  # PEFT wants the module names spelled out when layers are chosen
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.model.layers[0].named_modules()
                             if isinstance(m, torch.nn.Linear)})
            where = {"target_modules": linear, "layers_to_transform": list(range(n_layers - top, n_layers))}
        lcfg = LoraConfig(r=hp["lora_rank"], lora_alpha=2 * hp["lora_rank"], lora_dropout=0.0,
                          task_type="CAUSAL_LM", **where)
        model = get_peft_model(model, lcfg)
        if weights_from is not None:
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(weights_from / "adapter_model.safetensors")))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    alpha = float(hp.get("neftune_alpha") or 0)
    if alpha > 0:
        add_embedding_noise(model, alpha)
    model.train()
    return model, tok


def add_embedding_noise(model, alpha: float) -> None:
    """NEFTune (Jain et al. 2023): uniform noise of scale alpha/sqrt(L·d) on the input embeddings while the
    model trains (never in eval mode), so it cannot key its answers on the exact tokens of a question."""
    import torch

    emb = model.get_input_embeddings()

    def hook(module, args, output):
        if not module.training:
            return output
        scale = alpha / math.sqrt(output.shape[-2] * output.shape[-1])
        return output + torch.empty_like(output).uniform_(-scale, scale)

    emb.register_forward_hook(hook)


def _start_from_fine_tuned(config: TrainConfig, cb: TrainCallbacks) -> None:
    """init_from is a fine-tuned model: it decides the base, the method and (LoRA) the rank, like a resume.

    A LoRA result is trained further as the same adapter (one adapter on the same base, so it is saved,
    served and exported like any other), not stacked under a new one."""
    meta = ckpt.read_meta(Path(config.init_from))
    if config.method != meta["method"]:
        cb.on_event("info", f"Continuing {config.init_from}'s {meta['method']} fine-tuning (it decides the method)")
    config.method = meta["method"]
    config.model = meta["base_model"]
    config.lora_rank = (meta.get("hyperparameters") or {}).get("lora_rank") or config.lora_rank
    config.lora_layers = (meta.get("hyperparameters") or {}).get("lora_layers") or "all"  # the same adapter


# --- setup: what train() decides before its first step ------------------------------------------

def _resume_from(config: TrainConfig, cb: TrainCallbacks) -> tuple[Path | None, dict | None]:
    """(resume dir, its tunery.json) when continuing a checkpoint; else init_from, if any, is applied."""
    resume_dir = Path(config.resume_from) if config.resume_from else None
    resume_meta = ckpt.read_meta(resume_dir) if resume_dir else None
    if resume_meta:
        # The checkpoint decides what is being trained; the config only adds where and with which data.
        config.method = resume_meta["method"]
        config.model = resume_meta["base_model"]
        config.init_from = resume_meta["hyperparameters"].get("init_from")
        config.objective = resume_meta["hyperparameters"].get("objective", "supervised")
    elif config.init_from:
        _start_from_fine_tuned(config, cb)
    return resume_dir, resume_meta


def _max_length(config: TrainConfig, resume_meta: dict | None) -> int:
    from tunery.models import context_length

    ctx = context_length(config.model)
    max_length = min(config.max_length or ctx, ctx)
    if resume_meta:
        max_length = resume_meta["hyperparameters"].get("max_length") or max_length
    return max_length


def _seed(config: TrainConfig, resume_meta: dict | None) -> int:
    if resume_meta:
        return resume_meta["hyperparameters"]["seed"]
    return config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)


@dataclass
class _Data:
    """The sets as trained: the file's examples (originals) plus their question rewrites, and validation."""

    originals: list
    train_set: list
    valid_set: list
    n_variants: int
    original_tokens: int
    replay: list  # [{"question", "answer"}]: the replay pairs trained beside the file (tunery.train.replay)
    paraphrases: list  # [[str]] per augmentable example: its questions' paraphrases (tunery.train.paraphrase)


def _load_data(config: TrainConfig, cb: TrainCallbacks, objective, tok, max_length: int,
               resume_meta: dict | None, seed: int, ranks=None) -> _Data:
    """Read and encode both files; add question rewrites (auto: small chat sets, see resolve_augment)."""
    valid_set = (objective.load(config.validation_file, tok, max_length, cb, "validation_file")
                 if config.validation_file else [])

    from tunery.data.augment import augment, augmentable, describe, question_turn
    from tunery.train import paraphrase

    # Question rewrites are for chat SFT only; preference pairs are trained as given.
    supervised = config.objective == "supervised"
    raw_train = read_file_examples(config.training_file, "training_file") if supervised else []
    n_augmentable = sum(augmentable(e) for e in raw_train)
    # On resume the checkpoint's choice stands; else it is decided once the file's examples are encoded
    # (the rule needs their tokens).
    n_variants = int(resume_meta["hyperparameters"].get("augment", 0)) if resume_meta else 0
    originals = (load_encoded(config.training_file, tok, max_length, cb, "training_file", raw_train) if supervised
                 else objective.load(config.training_file, tok, max_length, cb, "training_file"))
    original_tokens = sum(len(e) for e in originals)
    if not resume_meta and n_augmentable:
        n_variants = resolve_augment(config, n_augmentable, original_tokens)
    train_set = list(originals)
    paraphrases: list = []
    if n_variants:
        # Rewrites depend only on (file, seed), so a resumed run rebuilds the same set.
        extra_ex = augment(raw_train, n_variants, seed)[len(raw_train):]
        paraphrases = _paraphrases(config, cb, raw_train, n_variants, resume_meta, ranks)
        if paraphrases:
            extra_ex = paraphrase.place(extra_ex, n_variants, paraphrases, question_turn)
        train_set += load_encoded(config.training_file, tok, max_length, TrainCallbacks(), "training_file",
                                  extra_ex)
        if not resume_meta:
            why = ("auto: a small set of chats, so each question is also trained in other wordings"
                   if config.augment == "auto" else "as requested")
            cb.on_event("info", f"Augmenting {n_augmentable} example(s) with {n_variants} question rewrite(s) "
                                f"each ({why}): {describe(raw_train, extra_ex, n_variants)}")
    replay = _replay_pairs(config, cb, raw_train, n_variants, resume_meta, ranks)
    if replay:
        from tunery.train.replay import as_examples

        train_set += load_encoded(config.training_file, tok, max_length, TrainCallbacks(), "training_file",
                                  as_examples(replay, raw_train))
    return _Data(originals, train_set, valid_set, n_variants, original_tokens, replay, paraphrases)


def _paraphrases(config: TrainConfig, cb: TrainCallbacks, raw_train: list, n_variants: int,
                 resume_meta: dict | None, ranks) -> list[list[str]]:
    """The run's paraphrases, per augmentable example: a resumed run's own, the ones rank 0 handed over, or
    made now (see paraphrase)."""
    from tunery.data.augment import augmentable, clip, question_turn
    from tunery.train import paraphrase, replay

    if resume_meta:
        return list(resume_meta.get("paraphrases") or [])
    if config.paraphrases is not None:  # a rank started by our rank 0
        return list(config.paraphrases)
    n = resolve_paraphrase(config, n_variants, replay.english(raw_train))
    if not n:
        return []
    questions = [e.messages[question_turn(e.messages)]["content"] for e in raw_train if augmentable(e)]
    t = time.perf_counter()
    made = paraphrase.make_for_run(config.model, questions, n) if ranks is None or ranks.leader else None
    if ranks:
        made = ranks.agree(made)
    kept = sum(len(ps) for ps in made)
    why = "auto: a small set of English chats" if config.paraphrase == "auto" else "as requested"
    shown = "; ".join(f"{q!r} → {clip(ps[0])!r}" for q, ps in zip(questions, made) if ps)
    cb.on_event("info", f"Paraphrased the questions with the base model ({why}): {kept} of {n * len(questions)} "
                        f"samples kept, in place of as many rule-based rewrites, in {time.perf_counter() - t:.0f} s"
                        + (f": {clip(shown, 240)}" if shown else ""))
    return made


def _replay_pairs(config: TrainConfig, cb: TrainCallbacks, raw_train: list, n_variants: int,
                  resume_meta: dict | None, ranks) -> list[dict]:
    """The run's replay pairs: a resumed run's own, the ones rank 0 handed over, or made now (see replay; the
    questions follow the data, not the run's seed)."""
    from tunery.train import replay
    from tunery.data.augment import clip

    if resume_meta:
        return list(resume_meta.get("replay") or [])
    if config.replay_pairs is not None:  # a rank started by our rank 0
        return list(config.replay_pairs)
    n = resolve_replay(config, n_variants, replay.english(raw_train)) if raw_train else 0
    if not n:
        return []
    pairs = (replay.make_for_run(config.model, raw_train, n, replay.data_seed(raw_train))
             if ranks is None or ranks.leader else None)
    if ranks:  # under torchrun every rank trains rank 0's pairs
        pairs = ranks.agree(pairs)
    why = "auto: a short run on a small set" if config.replay == "auto" else "as requested"
    if not pairs:
        cb.on_event("info", f"No replay ({why}): the base model finished none of its answers to {n} general "
                            f"question(s) within {replay.MAX_ANSWER_TOKENS} tokens")
        return []
    shown = "; ".join(f"{p['question']!r} → {clip(p['answer'])!r}" for p in pairs[:2])
    cb.on_event("info", f"Replaying the base model's own answers to {len(pairs)} general question(s) beside the "
                        f"data ({why}), so the model keeps answering other questions as it did: {shown}")
    return pairs


def _hyperparameters(config: TrainConfig, data: _Data, resume_meta: dict | None, seed: int,
                     max_length: int) -> dict:
    """The run's resolved hyperparameters (a resumed run keeps its checkpoint's)."""
    if resume_meta:
        return dict(resume_meta["hyperparameters"])
    supervised = config.objective == "supervised"
    classifier = supervised and bool(data_labels(data.originals))
    hp = resolve_hyperparameters(config, len(data.train_set), data.n_variants, len(data.originals),
                                 data.original_tokens, classifier)
    hp["seed"] = seed
    hp["method"] = config.method
    hp["lora_rank"] = config.lora_rank if config.method == "lora" else None
    if config.method == "lora":
        hp["lora_layers"] = resolve_lora_layers(config, data.n_variants, _n_layers(config.model))
    hp["max_length"] = max_length
    hp["augment"] = data.n_variants
    hp["replay"] = len(data.replay)
    hp["paraphrase"] = max((len(ps) for ps in data.paraphrases), default=0)
    hp["neftune_alpha"] = resolve_neftune(config, data.n_variants, classifier) if supervised else 0.0
    hp["label_smoothing"] = resolve_label_smoothing(config, data_labels(data.originals)) if supervised else 0.0
    hp["early_stop"] = supervised and ((config.n_epochs == "auto") if config.early_stop == "auto"
                                       else bool(config.early_stop))
    hp.update(resolve_objective(config))
    if config.init_from:
        hp["init_from"] = str(config.init_from)
    return hp


def _n_layers(model: str) -> int:
    import json

    from tunery.models import materialize

    cfg = json.loads((materialize(model) / "config.json").read_text())
    return int(cfg.get("num_hidden_layers") or cfg.get("text_config", {}).get("num_hidden_layers"))


def _explain_auto(cb: TrainCallbacks, config: TrainConfig, hp: dict) -> None:
    """One event naming what the small-set auto rules decided, so "auto" is never a silent choice."""
    if not hp.get("augment") or config.augment != "auto":
        return
    parts = []
    if config.batch_size == "auto":
        parts.append(f"batch size {hp['batch_size']}")
    if config.learning_rate_multiplier == "auto":
        parts.append(f"learning rate multiplier {hp['learning_rate_multiplier']:g} "
                     f"({hp['learning_rate']:.2e})")
    if config.neftune_alpha == "auto" and hp.get("neftune_alpha"):
        parts.append(f"NEFTune embedding noise {hp['neftune_alpha']:g}")
    if config.lora_layers == "auto" and hp.get("lora_layers") and hp["lora_layers"] < _n_layers(config.model):
        parts.append(f"LoRA on the top {hp['lora_layers']} of {_n_layers(config.model)} layers")
    if hp.get("early_stop"):
        parts.append(f"at most {hp['n_epochs']} epochs, stopping early once every training answer is reproduced")
    if parts:
        cb.on_event("info", "Auto settings for a small set of chats (a short run must memorise each fact): "
                            + ", ".join(parts))


def _explain_dpo(cb: TrainCallbacks, config: TrainConfig, hp: dict) -> None:
    """One event naming what "auto" decided for a DPO run."""
    if hp.get("objective") != "dpo":
        return
    parts = []
    if config.beta == "auto":
        parts.append(f"beta {hp['beta']:g}")
    if config.nll_weight == "auto" and hp.get("nll_weight"):
        parts.append(f"the preferred outputs' likelihood trained beside the DPO loss (weight {hp['nll_weight']:g}: "
                     "plain DPO on pairs that share all but an ending learns never to end rather than to write "
                     "the ending)")
    counted = [f"{k.replace('_', ' ')} {hp[k]:g}" for k in ("n_epochs", "batch_size", "learning_rate_multiplier")
               if getattr(config, k) == "auto"]
    if config.learning_rate_multiplier == "auto":
        counted[-1] += f" ({hp['learning_rate']:.2e})"
    if counted:
        parts.append(", ".join(counted) + " (the supervised rules, counting pairs as examples)")
    if parts:
        cb.on_event("info", "Auto settings for preference pairs (DPO): " + "; ".join(parts))


def _explain_labels(cb: TrainCallbacks, config: TrainConfig, hp: dict, data: _Data, tok) -> None:
    """One event when auto treats the file as classifier data (label smoothing among its labels, its rate and
    noise)."""
    labels = data_labels(data.originals) if hp.get("objective", "supervised") == "supervised" else []
    rules = []
    if config.label_smoothing == "auto" and hp.get("label_smoothing"):
        rules.append(f"auto label smoothing {hp['label_smoothing']:g} among them, so each label stays among the "
                     "top logprobs (an application reads their probabilities)")
    if config.learning_rate_multiplier == "auto" and config.method == "lora":
        rules.append(f"learning rate multiplier {hp['learning_rate_multiplier']:g} ({hp['learning_rate']:.2e})")
    if config.neftune_alpha == "auto" and hp.get("neftune_alpha"):
        rules.append(f"NEFTune embedding noise {hp['neftune_alpha']:g}")
    if not labels or not rules:
        return
    names = ", ".join(repr(tok.decode([t])) for t in labels)
    cb.on_event("info", f"Classifier data: every example completes with one of {len(labels)} labels ({names}); "
                        + "; ".join(rules))


def _announce(cb: TrainCallbacks, hp: dict, base_model: str, method: str, data: _Data, device: str,
              precision: str, steps_per_epoch: int, total_steps: int, processes: int = 1) -> None:
    """on_resolved: the hyperparameters and the run's shape, with a time estimate from measured throughput."""
    cb.on_resolved({**hp, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                    "n_train_examples": len(data.train_set), "n_valid_examples": len(data.valid_set),
                    "device": device, "precision": precision, "processes": processes,
                    "estimated_seconds": round(_estimated_seconds(hp, data, base_model, method), 1)})


def _estimated_seconds(hp: dict, data: _Data, base_model: str, method: str) -> float:
    """The scheduled steps' training time at the throughput measured on this machine (advisory)."""
    throughput = DEFAULT_CPU_THROUGHPUT
    try:
        from tunery.data.estimate import measured_throughput

        throughput = float(measured_throughput(base_model, method)[0]) or throughput
    except Exception:  # estimates are advisory: no data module or no measurement yet
        pass
    return sum(len(e) for e in data.train_set) * hp["n_epochs"] / throughput


def _world(config: TrainConfig, hp: dict, data: _Data, base_model: str, device: str) -> int:
    """How many processes this run is split over (config.processes; auto: see distributed.auto_processes)."""
    from tunery.train import distributed

    if config.objective != "supervised":  # DPO's pairs are trained in one process
        return 1
    if config.nnodes > 1:  # processes per node
        per_node = distributed.node_processes(device) if config.processes == "auto" else int(config.processes)
        return per_node * config.nnodes
    if config.processes != "auto":
        return int(config.processes)
    return distributed.auto_processes(device, _estimated_seconds(hp, data, base_model, config.method),
                                      hp["batch_size"])


def _split_run(config: TrainConfig, cb: TrainCallbacks, hp: dict, data: _Data, world: int, device: str):
    """Start the run's other ranks (see distributed) and return the Group this process leads."""
    from tunery.train import distributed

    config.seed = hp["seed"]  # every rank must build the same data, order and adapter
    config.replay_pairs = data.replay
    config.paraphrases = data.paraphrases
    backend = "NCCL" if device.startswith("cuda") else "gloo"
    if config.nnodes > 1:
        cb.on_event("info", f"Waiting for the workers of nodes 1-{config.nnodes - 1} at "
                            f"{config.rdzv_endpoint} to start their {world - world // config.nnodes} of the "
                            f"run's {world} ranks")
    ranks = distributed.start(config, world, device)
    where = f" on {config.nnodes} nodes" if config.nnodes > 1 else ""
    cb.on_event("info", f"Training in {world} processes{where} (torch.distributed, {backend}): "
                        "each takes a slice of every batch and the gradients are summed")
    return ranks


def _start_state(cb: TrainCallbacks, opt, resume_dir: Path | None, hp: dict, n_examples: int, device: str,
                 total_steps: int, model=None, ranks=None) -> tuple[int, int, dict, list]:
    """(step, trained_tokens, last metrics, history): a resumed run's saved state (optimizer and random
    generators restored too), or a fresh start seeded from hp["seed"]."""
    import torch

    if resume_dir is not None:
        state = ckpt.load_state(resume_dir)
        # Saved by one process (keyed by index) or by sharded ranks (by name): either loads either way.
        names = [n for n, p in model.named_parameters() if p.requires_grad] if model is not None else []
        if ranks is not None and ranks.fsdp:
            ranks.load_optimizer_state(model, opt, ckpt.optimizer_by_name(state["optimizer"], names))
        else:
            opt.load_state_dict(ckpt.optimizer_by_index(state["optimizer"], names))
        ckpt.restore_rng(state)
        cb.on_event("info", f"Resuming from {resume_dir} at step {state['step']}/{total_steps}")
        return state["step"], state["trained_tokens"], state["metrics"], state["history"]
    torch.manual_seed(hp["seed"])
    random.seed(hp["seed"])
    cb.on_event("info", f"Fine-tuning started: {n_examples} examples, {hp['n_epochs']} epochs, batch size "
                        f"{hp['batch_size']}, {total_steps} steps, learning rate {hp['learning_rate']:.2e} on {device}")
    return 0, 0, {}, []


# --- the loop's helpers: model and optimizer, checkpoints, stop requests, one step, validation --

def _build_run(config: TrainConfig, objective, hp: dict, data: _Data, device: str, autocast, max_tokens: int,
               ranks, resume_dir: Path | None, cb: TrainCallbacks):
    """(model, optimizer, RunContext): the model built (from a checkpoint when resuming; sharded with FSDP for
    a full fine-tune over several ranks), the objective started on it, and AdamW over its trainable
    parameters."""
    import torch

    model, _ = _build_model(config, hp, device, resume_dir)
    if ranks and config.method == "full":
        ranks.shard_model(model)
        cb.on_event("info", f"Full fine-tuning sharded with FSDP (FULL_SHARD) over {ranks.world} processes: each "
                            "holds a slice of the weights, gradients and optimizer state")
    params = [p for p in model.parameters() if p.requires_grad]
    run = RunContext(device, autocast, max_tokens, config.method,
                     Path(config.init_from) if config.init_from else None, ranks, params)
    objective.start(model, hp, data.train_set, data.valid_set, resume_dir, run)
    opt = torch.optim.AdamW(params, lr=hp["learning_rate"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    return model, opt, run


@dataclass
class _Saver:
    """Writes a checkpoint folder: the model, the objective's state, the optimizer, random generators and
    history. Called on every rank; rank 0 writes. Every rank holds the same weights, or (FSDP) a slice of
    them that all ranks gather first."""

    model: object
    tok: object
    objective: object
    opt: object
    meta_base: dict
    history: list
    leader: bool
    ranks: object = None

    def __call__(self, path: Path, epoch: int, metrics: dict, step: int, trained_tokens: int) -> None:
        sharded = self.ranks is not None and self.ranks.fsdp
        weights = self.ranks.full_model_state(self.model) if sharded else None
        opt_state = self.ranks.full_optimizer_state(self.model, self.opt) if sharded else None
        if not self.leader:
            return
        save_model_dir(self.model, self.tok, path,
                       {**self.meta_base, "step": step, "epoch": epoch, "metrics": metrics}, weights)
        self.objective.save(path)
        ckpt.save_state(path, optimizer=self.opt, step=step, trained_tokens=trained_tokens, metrics=metrics,
                        history=self.history, optimizer_state=opt_state)


def _halt(cb: TrainCallbacks, ranks, save: _Saver, out_dir: Path, step: int, steps_per_epoch: int,
          total_steps: int, last_metrics: dict, trained_tokens: int) -> str | None:
    """Polled before every step: the run's status after a stop request (rank 0's, on every rank): "cancelled",
    or "paused" with resume state saved; else None."""
    stop = ranks.agree(cb.should_stop()) if ranks else cb.should_stop()
    if stop == "cancel":
        cb.on_event("info", f"Training cancelled at step {step}/{total_steps}")
        return "cancelled"
    if stop == "pause":
        save(out_dir / ckpt.RESUME_DIR, step // steps_per_epoch + 1, last_metrics, step, trained_tokens)
        cb.on_event("info", f"Training paused at step {step}/{total_steps}; resume state in "
                            f"{out_dir / ckpt.RESUME_DIR}")
        return "paused"
    return None


def _optimizer_step(model, opt, objective, batch: list, run: RunContext, lr: float) -> tuple[dict, float]:
    """One optimizer step over `batch` at learning rate `lr`: (the objective's step statistics, seconds)."""
    t0 = time.perf_counter()
    for g in opt.param_groups:
        g["lr"] = lr
    stats = objective.step(model, batch, run)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return stats, time.perf_counter() - t0


def _validation(model, objective, run: RunContext, step: int, epoch_end: bool, eval_every: int,
                valid_batches: list, valid_set: list) -> dict:
    """valid_* on one validation batch (in turn) every eval_every steps and at epoch ends; full_valid_* over
    the whole validation set at epoch ends."""
    m = {}
    if valid_batches and (step % eval_every == 0 or epoch_end):
        vb = valid_batches[(step // eval_every) % len(valid_batches)]
        m.update({f"valid_{k2}": v for k2, v in objective.evaluate(model, vb, run).items()})
    if epoch_end and valid_set:
        m.update({f"full_valid_{k2}": v for k2, v in objective.evaluate(model, valid_set, run).items()})
    return m


def _epoch_checkpoint(cb: TrainCallbacks, config: TrainConfig, save: _Saver, objective, m: dict, step: int,
                      epoch: int, n_epochs: int, trained_tokens: int, checkpoints: list) -> list:
    """Save the epoch's checkpoint, keep the newest config.keep_checkpoints, report it; the kept ones."""
    ckpt_dir = Path(config.output_dir) / ckpt.CHECKPOINTS_DIR
    path = ckpt_dir / f"step-{step}"
    save(path, epoch + 1, _checkpoint_metrics(m, objective), step, trained_tokens)
    if not save.leader:
        return checkpoints
    info = CheckpointInfo(step=step, epoch=epoch + 1, path=path, metrics=_checkpoint_metrics(m, objective))
    checkpoints.append(info)
    ckpt.prune(ckpt_dir, config.keep_checkpoints)
    checkpoints = [c for c in checkpoints if c.path.exists()]
    cb.on_checkpoint(info)
    cb.on_event("info", f"Checkpoint created at step {step} (epoch {epoch + 1}/{n_epochs})")
    return checkpoints


# --- the loop ---------------------------------------------------------------------------------

def train(config: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Fine-tune config.model on config.training_file; see TrainConfig and TrainCallbacks.

    Setup (the helpers above), then one flat loop: stop requests, one optimizer step, metrics, an epoch's
    checkpoint, early stop; then the final model (_finish)."""
    from tunery.models import load_tokenizer, pick_device, resolve, setup_threads

    cb = callbacks or TrainCallbacks()
    config.validate()
    # One core is left to the server, the worker and the evaluation passes beside the trainer. Measured on
    # this 2-core machine (SmolLM2-135M LoRA step, 2 chats): 1 thread 130 tokens/s, 2 threads 135 when the
    # machine is otherwise idle, and 2 threads fall far behind as soon as anything else runs (the worker's
    # note on OMP_WAIT_POLICY); the quickstart took 6m00s on 1 thread against 7m49s on 2.
    setup_threads(config.num_threads, reserve=1)
    device = pick_device(config.device)
    ranks = _join_launcher(config, device)  # started by torchrun (or by our own rank 0): one of its ranks
    if ranks and not ranks.leader:
        cb = TrainCallbacks()  # rank 0 reports
    resume_dir, resume_meta = _resume_from(config, cb)
    base_model = resolve(config.model).name
    objective = make_objective(config.objective)
    tok = load_tokenizer(config.model)
    max_length = _max_length(config, resume_meta)
    seed = _seed(config, resume_meta)
    if ranks and config.seed is None:  # torchrun's ranks take rank 0's pick (ours are started with it)
        seed = ranks.agree(seed)
    data = _load_data(config, cb, objective, tok, max_length, resume_meta, seed, ranks)
    hp = _hyperparameters(config, data, resume_meta, seed, max_length)
    if not resume_meta:
        _explain_auto(cb, config, hp)
        _explain_dpo(cb, config, hp)
        _explain_labels(cb, config, hp, data, tok)
    steps_per_epoch = math.ceil(len(data.train_set) / hp["batch_size"])
    total_steps = steps_per_epoch * hp["n_epochs"]
    precision, autocast = _precision(config, device)
    max_tokens = config.max_tokens_per_micro_batch or (16384 if device.startswith("cuda") else CPU_MICRO_BATCH_TOKENS)
    world = ranks.world if ranks else _world(config, hp, data, base_model, device)
    if config.nnodes > 1 and world == 1:
        cb.on_event("info", f"DPO trains in one process: the other {config.nnodes - 1} node(s) stay idle")
    _announce(cb, hp, base_model, config.method, data, device, precision, steps_per_epoch, total_steps, world)
    if ranks is None and world > 1:
        ranks = _split_run(config, cb, hp, data, world, device)
    if ranks:
        device = ranks.device
        _rank_threads(config, ranks.local_world)
    with _closing(ranks):
        return _run(config, cb, objective, tok, data, hp, ranks, base_model, device, precision, autocast,
                    max_tokens, resume_dir)


def _run(config: TrainConfig, cb: TrainCallbacks, objective, tok, data: _Data, hp: dict, ranks, base_model: str,
         device: str, precision: str, autocast, max_tokens: int, resume_dir: Path | None) -> TrainResult:
    """The loop itself, once everything is decided: build the model, step, check, checkpoint, finish."""
    train_set, originals, valid_set = data.train_set, data.originals, data.valid_set
    seed, batch, n_epochs = hp["seed"], hp["batch_size"], hp["n_epochs"]
    steps_per_epoch = math.ceil(len(train_set) / batch)
    total_steps = steps_per_epoch * n_epochs
    eval_every = config.eval_every or max(1, total_steps // 20)
    out_dir = Path(config.output_dir)
    leader = ranks is None or ranks.leader
    model, opt, run = _build_run(config, objective, hp, data, device, autocast, max_tokens, ranks, resume_dir,
                                 cb)
    step, trained_tokens, last_metrics, history = _start_state(cb, opt, resume_dir, hp, len(train_set), device,
                                                               total_steps, model, ranks)
    meta_base = {"base_model": base_model, "method": config.method, "hyperparameters": hp,
                 "total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "replay": data.replay,
                 "paraphrases": data.paraphrases}
    save = _Saver(model, tok, objective, opt, meta_base, history, leader, ranks)
    checkpoints: list[CheckpointInfo] = []
    session_tokens = 0
    session_time = 0.0
    status = "succeeded"
    order = functools.lru_cache(maxsize=1)(functools.partial(epoch_order, len(train_set), seed))  # per epoch
    valid_batches = [valid_set[i:i + batch] for i in range(0, len(valid_set), batch)]
    stopper = _EarlyStop(config, hp, steps_per_epoch, history)
    while step < total_steps:
        halted = _halt(cb, ranks, save, out_dir, step, steps_per_epoch, total_steps, last_metrics,
                       trained_tokens)
        if halted:
            status = halted
            break
        epoch, k = divmod(step, steps_per_epoch)
        batch_ex = [train_set[i] for i in order(epoch)[k * batch:(k + 1) * batch]]

        lr = lr_at(step, total_steps, hp["learning_rate"])
        stats, dt = _optimizer_step(model, opt, objective, batch_ex, run, lr)
        step_tokens = sum(len(e) for e in batch_ex)
        step += 1
        trained_tokens += step_tokens
        session_tokens += step_tokens
        session_time += dt

        m = {"step": step, "total_steps": total_steps, "epoch": epoch + 1,
             **{f"train_{k2}": v for k2, v in stats.items()},
             "learning_rate": lr, "trained_tokens": trained_tokens,
             "tokens_per_second": session_tokens / session_time if session_time else 0.0}
        epoch_end = step % steps_per_epoch == 0
        m.update(_validation(model, objective, run, step, epoch_end, eval_every, valid_batches, valid_set))
        stopper.check(m, step, total_steps, epoch_end, objective, originals,
                      lambda ok: evaluate(model, originals, max_tokens, device, autocast, ok, ranks))
        last_metrics = m
        history.append({k2: v for k2, v in m.items() if k2 not in ("total_steps",)})
        cb.on_metrics(m)
        if epoch_end:  # every rank: a sharded model's weights are gathered from all of them
            checkpoints = _epoch_checkpoint(cb, config, save, objective, m, step, epoch, n_epochs,
                                            trained_tokens, checkpoints)
        if stopper.stop_here(cb, m, step, total_steps, len(originals)):
            break

    if status == "succeeded":
        extra_tokens, extra_time = _after_schedule(config, hp, stopper, model, opt, objective, originals, run, cb,
                                                   step)
        trained_tokens += extra_tokens
        session_tokens += extra_tokens
        session_time += extra_time
    weights = ranks.full_model_state(model) if ranks and ranks.fsdp and status == "succeeded" else None
    return _finish(cb, config, status, model, tok, out_dir, meta_base, objective, hp, step, trained_tokens,
                   last_metrics, checkpoints, stopper.stopped_at, session_tokens, session_time, leader, weights)


class _EarlyStop:
    """The early stop's bookkeeping: when the file's own answers are checked (every `every` steps and at
    epoch ends), and how many checks in a row found them all exact (a resumed run counts its history's)."""

    def __init__(self, config: TrainConfig, hp: dict, steps_per_epoch: int, history: list[dict]):
        extra = config.extra or {}
        self.on = bool(hp.get("early_stop"))
        self.every = max(1, math.ceil(steps_per_epoch * float(extra.get("check_frac", 0.5))))
        self.min_steps = int(steps_per_epoch * float(extra.get("min_epochs", 0)))
        self.accuracy = float(extra.get("stop_accuracy", 1.0))
        self.stopped_at: int | None = None
        self.checked_at: int | None = None
        self.original_ok: list[bool] = []  # per original example, at the last check
        self.streak = 0
        for h in (h for h in history if "original_accuracy" in h):
            self.streak = self.streak + 1 if h["original_accuracy"] >= self.accuracy else 0

    def check(self, m: dict, step: int, total_steps: int, epoch_end: bool, objective, originals, measure) -> None:
        """At a check step: original_loss/original_accuracy into `m` via measure(ok_list), and the streak."""
        if not self.on or not (step % self.every == 0 or epoch_end):
            return
        if step < total_steps and self.accuracy >= 1 \
                and not all(getattr(objective, "exact", {}).get(id(e), False) for e in originals):
            # The training passes already show an answer that is not yet exact: an evaluation pass could
            # not pass, so it is skipped (about a tenth of a small run's time) and the streak restarts.
            self.streak = 0
            return
        # Teacher-forced accuracy on the file's own examples: 100% means greedy decoding reproduces every
        # trained answer of the file token for token.
        self.original_ok = []
        m["original_loss"], m["original_accuracy"] = measure(self.original_ok)
        self.checked_at = step
        self.streak = self.streak + 1 if m["original_accuracy"] >= self.accuracy else 0

    def done(self, m: dict, step: int, total_steps: int) -> bool:
        return self.on and "original_accuracy" in m and self.min_steps <= step < total_steps \
            and self.streak >= EARLY_STOP_PATIENCE

    def stop_here(self, cb: TrainCallbacks, m: dict, step: int, total_steps: int, n_originals: int) -> bool:
        """done(), recorded and announced."""
        if not self.done(m, step, total_steps):
            return False
        self.stopped_at = step
        cb.on_event("info", f"Stopping at step {step} of at most {total_steps}: the model reproduces all "
                            f"{n_originals} training answers (teacher-forced token accuracy 100% at "
                            f"{EARLY_STOP_PATIENCE} checks in a row, every {self.every} steps)")
        return True


def _after_schedule(config: TrainConfig, hp: dict, stopper: _EarlyStop, model, opt, objective, originals: list,
                    run, cb: TrainCallbacks, step: int) -> tuple[int, float]:
    """A succeeded run that ran its whole schedule without reproducing every answer: _repair (when early stop
    is on); returns (trained tokens, seconds)."""
    rounds = int((config.extra or {}).get("repair", REPAIR_ROUNDS))
    if not stopper.on or stopper.stopped_at is not None or rounds <= 0:
        return 0, 0.0
    lr = hp["learning_rate"] * float((config.extra or {}).get("repair_lr", REPAIR_LR_FRACTION))
    return _repair(model, opt, objective, originals, run, cb, rounds, lr, hp["batch_size"], hp["seed"],
                   stopper.original_ok if stopper.checked_at == step else None)


REPAIR_ROUNDS = 8
"""Rounds of _repair at most: each trains once more on the file's answers that greedy decoding still gets
wrong after the scheduled steps."""
REPAIR_LR_FRACTION = 0.1
"""_repair's learning rate as a fraction of the peak: where the schedule ends (lr_at decays to 10%)."""


def _repair(model, opt, objective, originals: list[Encoded], run, cb: TrainCallbacks, rounds: int, lr: float,
            batch: int, seed: int, known: list[bool] | None = None) -> tuple[int, float]:
    """After the schedule: train again on the training answers the model does not yet reproduce token for
    token, a few rounds, at the schedule's final learning rate; returns (trained tokens, seconds).

    A short run on a small fact set ends with most answers exact and one or two with a wrong number; one
    more epoch over everything would cost as much as the whole repair several times over."""
    rng = random.Random(seed)
    tokens, secs, n_steps = 0, 0.0, 0
    # The loop's last check may have been at the final step: its per-example answer is reused. Between
    # rounds only the answers still wrong are checked again (a step rarely breaks an exact answer; the
    # final count below checks them all).
    ok = known or reproduced(model, originals, run)
    wrong = [e for e, good in zip(originals, ok) if not good]
    first_wrong = len(wrong)
    for _ in range(rounds):
        if not wrong:
            break
        rng.shuffle(wrong)
        for i in range(0, len(wrong), batch):
            group = wrong[i:i + batch]
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr
            objective.step(model, group, run)
            opt.step()
            opt.zero_grad(set_to_none=True)
            secs += time.perf_counter() - t0
            tokens += sum(len(e) for e in group)
            n_steps += 1
        still = reproduced(model, wrong, run)
        wrong = [e for e, good in zip(wrong, still) if not good]
    if first_wrong:
        ok = reproduced(model, originals, run)
    if not first_wrong:
        return 0, 0.0
    left = len(originals) - sum(ok)
    cb.on_event("info", f"{first_wrong} of {len(originals)} training answers were not yet reproduced token for "
                        f"token after the scheduled steps: trained them again ({n_steps} extra steps); "
                        + ("now every answer is reproduced" if not left else f"{left} still differ"))
    return tokens, secs


def _finish(cb: TrainCallbacks, config: TrainConfig, status: str, model, tok, out_dir: Path, meta_base: dict,
            objective, hp: dict, step: int, trained_tokens: int, last_metrics: dict, checkpoints: list,
            stopped_at: int | None, session_tokens: int, session_time: float, leader: bool = True,
            weights: dict | None = None) -> TrainResult:
    """After the loop: a succeeded run saves final/ (and drops resume/) and records its throughput."""
    steps_per_epoch, total_steps, n_epochs = meta_base["steps_per_epoch"], meta_base["total_steps"], hp["n_epochs"]
    base_model = meta_base["base_model"]
    model_dir = None
    resume_out = out_dir / ckpt.RESUME_DIR if status == "paused" else None
    if status == "succeeded" and not leader:
        model_dir = out_dir / ckpt.FINAL_DIR  # written by rank 0
    elif status == "succeeded":
        model_dir = out_dir / ckpt.FINAL_DIR
        final_hp = dict(hp)
        if stopped_at is not None:
            final_hp.update(n_epochs=math.ceil(stopped_at / steps_per_epoch), max_epochs=n_epochs,
                            stopped_at_step=stopped_at)
        save_model_dir(model, tok, model_dir, {**meta_base, "hyperparameters": final_hp, "step": step,
                                               "epoch": math.ceil(step / steps_per_epoch),
                                               "metrics": _checkpoint_metrics(last_metrics, objective)}, weights)
        if (out_dir / ckpt.RESUME_DIR).is_dir():  # a finished run has nothing left to resume
            import shutil

            shutil.rmtree(out_dir / ckpt.RESUME_DIR, ignore_errors=True)
        tps = session_tokens / session_time if session_time else 0.0
        cb.on_event("info", f"Training finished: {step} steps, {trained_tokens} trained tokens, "
                            f"{tps:.0f} tokens/s")
        if session_tokens >= 1000 and config.objective == "supervised":  # estimates are for SFT jobs
            try:
                from tunery.data.estimate import record_throughput
            except ImportError:
                record_throughput = None
            if record_throughput is not None:
                record_throughput(base_model, config.method, tps)
    hp_public = {**hp, "total_steps": total_steps}
    if stopped_at is not None:  # the epochs actually trained (the last one may be partial)
        hp_public["n_epochs"] = math.ceil(stopped_at / steps_per_epoch)
        hp_public["max_epochs"] = n_epochs
        hp_public["stopped_at_step"] = stopped_at
    return TrainResult(status=status, hyperparameters=hp_public, trained_tokens=trained_tokens,
                       final_metrics=last_metrics, checkpoints=checkpoints, model_dir=model_dir,
                       resume_dir=resume_out)


def _join_launcher(config: TrainConfig, device: str):
    """The distributed.Group this process was launched into (torchrun, or a rank 0 of ours), else None."""
    from tunery.train import distributed

    if distributed.launched_world() < 2:
        return None
    if config.objective != "supervised":
        raise InvalidRequest("DPO runs in one process: start it without torchrun", param="method")
    return distributed.join(device)


def _rank_threads(config: TrainConfig, world: int) -> None:
    """On CPU the ranks of one machine share the run's threads (TrainConfig.num_threads; 0: the cores)
    equally."""
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, (config.num_threads or cores) // world))


@contextlib.contextmanager
def _closing(ranks):
    """Leave the process group at the end of the run; on an error, stop the ranks this process started."""
    if ranks is None:
        yield
        return
    try:
        yield
    except BaseException:
        ranks.close(ok=False)
        raise
    ranks.close()


def _checkpoint_metrics(m: dict, objective) -> dict:
    keys = ("step",) + per_split(objective.checkpoint_keys)
    return {k: m[k] for k in keys if k in m}


def save_model_dir(model, tok, path: Path, meta: dict, state_dict: dict | None = None) -> None:
    with quiet_hf():
        ckpt.save_model_dir(model, tok, path, meta, state_dict)


__all__ = ["train", "BASE_LEARNING_RATE"]
