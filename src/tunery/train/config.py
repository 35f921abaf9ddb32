"""Training configuration and the job's hyperparameters: their names, ranges, "auto" rules and resolution.

The one owner of these facts (torch-free): the API's checks (store/jobs.py), the wire shape
(store/wire.py), the worker (worker/runner.py), `tunery data stats` (data/cli.py hands auto_epochs to
data/stats.py) and the trainer all read them from here.

Learning rate = BASE_LEARNING_RATE[method] × learning_rate_multiplier, so the multiplier means the same
thing for every model: 1.0 is a sound default for that method, 2.0 twice as aggressive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tunery.errors import InvalidRequest

BASE_LEARNING_RATE = {
    # AdamW peak rates at multiplier 1.0 (linear warmup, then linear decay to 10% of the peak).
    # LoRA (all linear layers, alpha = 2 × rank): 2e-4, the common LoRA default. Full fine-tuning updates
    # every weight, so it gets a rate 20x smaller to avoid wrecking what the model already knows.
    "lora": 2e-4,
    "full": 1e-5,
}

# --- the job's hyperparameters as the API names them ----------------------------------------------

# name → (kind, low, high, low_inclusive): what a job may ask for (store/jobs.py) and TrainConfig.validate.
HYPERPARAMETER_RANGES: dict[str, tuple[type, float, float, bool]] = {
    "n_epochs": (int, 1, 50, True),
    "batch_size": (int, 1, 256, True),
    "learning_rate_multiplier": (float, 0, 10, False),
    "beta": (float, 0, 2, False),
}
SUPERVISED_KEYS = ("n_epochs", "batch_size", "learning_rate_multiplier")
"""A supervised job's hyperparameters, also the top-level `hyperparameters` of the job object."""
DPO_KEYS = SUPERVISED_KEYS + ("beta",)
"""A DPO job's hyperparameters; also what the worker stores as the job's resolved hyperparameters."""
RESOLVED_KEYS = DPO_KEYS


def keys_for(method_type: str) -> tuple[str, ...]:
    """The hyperparameters a job of this method type (OpenAI's method.type) may set."""
    return DPO_KEYS if method_type == "dpo" else SUPERVISED_KEYS


def from_job(hyperparameters: dict | None, method_type: str) -> dict:
    """The TrainConfig fields a job's stored hyperparameters and method type decide ("auto" when unset)."""
    hp = hyperparameters or {}
    out: dict = {k: hp.get(k, "auto") for k in SUPERVISED_KEYS}
    out["objective"] = method_type
    if method_type == "dpo":
        out["beta"] = hp.get("beta", "auto")
    return out


# OpenAI's documented "auto" batch size is ~0.2% of the examples; small sets use batch 1.
MAX_AUTO_BATCH = 32


@dataclass
class TrainConfig:
    """What to train. Fields mirror the OpenAI job's hyperparameters plus what a local run needs."""

    model: str
    """Base model: a registry name, alias, local HF directory or HF repo id."""
    training_file: Path | str
    """JSONL with chat ({"messages": [...]}) or prompt/completion examples."""
    output_dir: Path | str
    """Where checkpoints/, final/ and (on pause) resume/ are written."""
    validation_file: Path | str | None = None
    """Optional JSONL in the same format; gives valid_* and full_valid_* metrics."""
    method: Literal["lora", "full"] = "lora"
    """"lora" trains a PEFT LoRA adapter on every linear layer; "full" updates all weights."""
    n_epochs: int | str = "auto"
    """Passes over the training file; "auto" follows OpenAI's cookbook heuristic."""
    batch_size: int | str = "auto"
    """Examples per optimizer step; "auto" is ~0.2% of the examples (1 for small sets), capped at 32."""
    learning_rate_multiplier: float | str = "auto"
    """Multiplies BASE_LEARNING_RATE[method]; "auto" picks from the run's length (see auto_multiplier)."""
    lora_rank: int = 16
    """LoRA rank r (alpha = 2r)."""
    lora_layers: int | str = "auto"
    """How many of the model's top transformer layers get LoRA adapters: "all", a number, or "auto"
    (AUTO_LORA_LAYERS_FRACTION of them for auto small-set runs: the upper half; all otherwise). Layers
    below the lowest adapter need no backward pass, so the upper half trains 1.25-1.6x faster."""
    seed: int | None = None
    """Data order and initialisation seed; None picks one (reported in the resolved hyperparameters)."""
    resume_from: Path | str | None = None
    """A checkpoint dir (checkpoints/step-N) or the resume/ dir of a paused run: continue exactly."""
    max_length: int | None = None
    """Longest example in tokens (longer ones are truncated with a warning); None → model context."""
    device: str | None = None
    """None → TUNERY_DEVICE / auto (cuda, then mps, then cpu)."""
    num_threads: int | None = None
    """torch CPU threads; None → TUNERY_NUM_THREADS, 0 → the cores this process may use."""
    processes: int | str = "auto"
    """Processes (ranks) the run is split over with torch.distributed, each training a slice of every batch
    (tunery.train.distributed); "auto": one per GPU, or on CPU one per core (at most the batch size and 4)
    for runs estimated at over 40 s. Supervised runs only; a run under torchrun uses torchrun's ranks. With
    method "full" the ranks shard the model (FSDP FULL_SHARD) instead of each holding all of it. With nnodes
    above 1, the processes on each node ("auto": one per GPU, or 1 on CPU)."""
    nnodes: int = 1
    """Machines the run spans (tunery worker --nnodes): this process is rank 0 on node 0; it hosts the
    rendezvous store at rdzv_endpoint and waits for the workers of the other nodes to start their ranks
    (tunery.train.distributed)."""
    rdzv_endpoint: str | None = None
    """HOST:PORT of this machine, reachable from the other nodes, where the run's rendezvous store listens."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA with bf16 support, fp32 on CPU. On an AVX-512-BF16 CPU (quiet, 2 threads,
    LoRA, 135M) CPU autocast trained 1.22x faster (247 vs 202 tok/s) but learned worse: the 25-fact quality
    bar ended at loss 0.37 / 96% recall vs fp32's 0.15 / 100%; on an AVX2-only CPU (no bf16 instructions, the
    2026-12-02 machine) it is ~12x slower (4.8 vs 57 tok/s, one core). So on CPU it is opt-in ("bf16")."""
    max_tokens_per_micro_batch: int | None = None
    """Split a batch into micro-batches of at most this many tokens (gradient accumulation); None → 512 on
    CPU (bounds activation memory at no speed cost), 16384 on CUDA."""
    eval_every: int | None = None
    """Steps between validation-batch evaluations; None → ~20 times per run."""
    keep_checkpoints: int = 3
    augment: int | str = "auto"
    """Rewrites of each chat example's question added to the training set (see tunery.data.augment);
    "auto": auto_variants() for small sets when n_epochs is auto, none when n_epochs is given; 0 turns it off."""
    early_stop: bool | str = "auto"
    """Stop once the model reproduces the training answers (token accuracy 100% on the original examples,
    teacher-forced, at EARLY_STOP_PATIENCE checks in a row); "auto": on when n_epochs is auto."""
    neftune_alpha: float | str = "auto"
    """NEFTune: uniform noise of scale alpha/sqrt(tokens × width) on the input embeddings while training, so the
    model cannot key an answer on the exact tokens of its question; "auto": AUTO_NEFTUNE_ALPHA for auto
    small-set runs (those that augment), 0 (off) otherwise."""
    replay: int | str = "auto"
    """Replay pairs trained beside the data: the starting model's own greedy answers to general questions from a
    bundled list (tunery.train.replay), so a short high-rate run keeps answering other questions as before;
    "auto": AUTO_REPLAY for auto small-set runs on English chats (those that augment), 0 otherwise."""
    replay_pairs: list | None = None
    """The replay pairs a run made, handed by its rank 0 to the ranks it starts (leave None)."""
    paraphrase: int | str = "auto"
    """How many of each question's rewrites are the starting model's own paraphrases of it (tunery.train.
    paraphrase) instead of rule-based ones; "auto": AUTO_PARAPHRASES (0 for now, see there) for auto
    small-set runs on English chats (those that augment), 0 otherwise. At most the run's rewrites per
    question."""
    paraphrases: list | None = None
    """The paraphrases a run made, handed by its rank 0 to the ranks it starts (leave None)."""
    label_smoothing: float | str = "auto"
    """For classifier data (see label_tokens): the share of a label's target spread over the other labels;
    "auto": AUTO_LABEL_SMOOTHING for such data, 0 otherwise. Other data is never smoothed."""
    objective: Literal["supervised", "dpo"] = "supervised"
    """OpenAI's method.type: "supervised" (token cross-entropy) or "dpo" (preference pairs, see dpo.py)."""
    beta: float | str = "auto"
    """DPO's β (strength of the pull towards the reference); "auto" → DEFAULT_DPO_BETA. Ignored for SFT."""
    nll_weight: float | str = "auto"
    """DPO: weight of the preferred outputs' negative log-likelihood (mean per token) added to the DPO loss;
    0 is plain DPO. "auto" → AUTO_NLL_WEIGHT. Ignored for SFT."""
    init_from: Path | str | None = None
    """Start from a tunery fine-tuned model dir (an ft: model: adapter or full weights) instead of the bare
    base; its tunery.json names the base and method. For DPO it is also the reference."""
    extra: dict = field(default_factory=dict)
    """Knobs for experiments with the auto rules, not part of the API: token_budget (AUTO_TOKEN_BUDGET),
    passes, aug_batch, mult, lora_fraction, check_frac, min_epochs, stop_accuracy, repair, repair_lr."""

    def validate(self) -> None:
        if self.method not in BASE_LEARNING_RATE:
            raise InvalidRequest(f"method must be 'lora' or 'full', got {self.method!r}", param="method")
        _check_auto_int(self.n_epochs, "n_epochs")
        _check_auto_int(self.batch_size, "batch_size")
        m = self.learning_rate_multiplier
        _, lo, hi, _ = HYPERPARAMETER_RANGES["learning_rate_multiplier"]
        if m != "auto" and (not isinstance(m, (int, float)) or isinstance(m, bool) or not (lo < m <= hi)):
            raise InvalidRequest(f"learning_rate_multiplier must be 'auto' or a number in ({lo:g}, {hi:g}], got {m!r}",
                                 param="hyperparameters.learning_rate_multiplier")
        ll = self.lora_layers
        if ll not in ("auto", "all") and (not isinstance(ll, int) or isinstance(ll, bool) or ll < 1):
            raise InvalidRequest(f"lora_layers must be 'auto', 'all' or a positive integer, got {ll!r}",
                                 param="lora_layers")
        if not isinstance(self.lora_rank, int) or not (1 <= self.lora_rank <= 256):
            raise InvalidRequest(f"lora_rank must be an integer in [1, 256], got {self.lora_rank!r}",
                                 param="lora_rank")
        if self.max_length is not None and self.max_length < 8:
            raise InvalidRequest("max_length must be at least 8 tokens", param="max_length")
        a = self.augment
        if a != "auto" and (not isinstance(a, int) or isinstance(a, bool) or not (0 <= a <= 32)):
            raise InvalidRequest(f"augment must be 'auto' or an integer in [0, 32], got {a!r}", param="augment")
        n = self.neftune_alpha
        if n != "auto" and (not isinstance(n, (int, float)) or isinstance(n, bool) or not (0 <= n <= 50)):
            raise InvalidRequest(f"neftune_alpha must be 'auto' or a number in [0, 50], got {n!r}",
                                 param="neftune_alpha")
        if self.early_stop not in ("auto", True, False):
            raise InvalidRequest(f"early_stop must be 'auto', true or false, got {self.early_stop!r}",
                                 param="early_stop")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise InvalidRequest(f"seed must be a non-negative integer, got {self.seed!r}", param="seed")
        r = self.replay
        if r != "auto" and (not isinstance(r, int) or isinstance(r, bool) or not (0 <= r <= MAX_REPLAY)):
            raise InvalidRequest(f"replay must be 'auto' or an integer in [0, {MAX_REPLAY}], got {r!r}",
                                 param="replay")
        pp = self.paraphrase
        if pp != "auto" and (not isinstance(pp, int) or isinstance(pp, bool) or not (0 <= pp <= 32)):
            raise InvalidRequest(f"paraphrase must be 'auto' or an integer in [0, 32], got {pp!r}",
                                 param="paraphrase")
        ls = self.label_smoothing
        if ls != "auto" and (not isinstance(ls, (int, float)) or isinstance(ls, bool) or not (0 <= ls < 0.5)):
            raise InvalidRequest(f"label_smoothing must be 'auto' or a number in [0, 0.5), got {ls!r}",
                                 param="label_smoothing")
        pr = self.processes
        if pr != "auto" and (not isinstance(pr, int) or isinstance(pr, bool) or not (1 <= pr <= 64)):
            raise InvalidRequest(f"processes must be 'auto' or an integer in [1, 64], got {pr!r}", param="processes")
        if not isinstance(self.nnodes, int) or isinstance(self.nnodes, bool) or not (1 <= self.nnodes <= 64):
            raise InvalidRequest(f"nnodes must be an integer in [1, 64], got {self.nnodes!r}", param="nnodes")
        if self.nnodes > 1:
            from tunery.settings import parse_endpoint

            try:
                parse_endpoint(self.rdzv_endpoint or "")
            except ValueError:
                raise InvalidRequest(f"rdzv_endpoint must be HOST:PORT when nnodes is above 1, got "
                                     f"{self.rdzv_endpoint!r}", param="rdzv_endpoint") from None
        _check_objective(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("training_file", "validation_file", "output_dir", "resume_from", "init_from"):
            d[k] = None if d[k] is None else str(d[k])
        return d


def _check_auto_int(v, name: str) -> None:
    if v == "auto":
        return
    _, lo, hi, _ = HYPERPARAMETER_RANGES[name]
    if not isinstance(v, int) or isinstance(v, bool) or not (lo <= v <= hi):
        raise InvalidRequest(f"{name} must be 'auto' or an integer in [{lo}, {hi}], got {v!r}",
                             param=f"hyperparameters.{name}")


# OpenAI cookbook's "auto" n_epochs (the rule for sets that get no question rewrites).
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def auto_epochs(n_examples: int) -> int:
    """OpenAI's "auto" n_epochs: 3, raised for tiny sets and lowered for huge ones (cookbook rule)."""
    n = max(1, int(n_examples))
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n)
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    return max(1, min(MAX_AUTO_BATCH, round(0.002 * n_examples)))


def auto_multiplier(total_steps: int, method: str) -> float:
    """Short runs need a larger rate to learn anything; long runs get the method's standard rate.

    5x the base rate for runs of <= 100 optimizer steps (25 examples × 4 auto epochs at batch 1), falling with
    sqrt(steps) to 1x at >= 2500 steps. Measured: 25 made-up facts on SmolLM2-135M, LoRA, 100 steps: 2e-4 (1x)
    learns 4% of them, 1e-3 (5x) 100%.
    """
    return round(min(5.0, max(1.0, 5.0 * math.sqrt(100 / max(1, total_steps)))), 3)


# --- "auto" for small fact sets -------------------------------------------------------------------
# Measured on invented-fact sets (bench/bench_learning.py): a small model shown each fact under a single
# question wording memorises the wording; question rewrites plus many more passes than the cookbook's rule
# make it answer reworded questions too. These rules apply only when n_epochs is "auto".
AUTO_SMALL_SET = 256
"""Sets of at most this many augmentable chats get the small-set rules below; larger ones the cookbook's."""
AUTO_TOKEN_BUDGET = 24_000
"""Trained tokens an auto small-set run aims at (measured 2026-12-02: 76-83 tokens/s at batch 2 on a quiet
2-core CPU, so ~5 minutes; issue 12 wants 3). A pure function of the data, so the same file always resolves
to the same run on any machine."""
AUTO_PASSES = (4, 24)
"""Bounds on the times each original example is seen, counting its rewrites."""
AUTO_MAX_VARIANTS = 5
AUTO_AUG_BATCH = 2
"""Auto batch size when augmenting. Memorising facts takes optimizer steps more than tokens: at the same
~24k-token budget, batch 2 (twice the steps of batch 4) with AUTO_AUG_MULTIPLIER lifted the Chiang Mai demo
(multi-fact answers) from 47% to 95% of key facts on its training questions, and ferry_short (one-fact
answers) from 96%/61% to 100%/68% verbatim/reworded (bench/bench_learning.py datasets, SmolLM2-135M, LoRA)."""
AUTO_AUG_MULTIPLIER = 10.0
"""LoRA learning-rate multiplier of an auto small-set run (2e-3 at rank 16, alpha 32): the measured step
above. Full fine-tuning keeps auto_multiplier (not measured at this rate)."""
EARLY_STOP_PATIENCE = 2


def auto_passes(original_tokens: int, budget: int = AUTO_TOKEN_BUDGET) -> int:
    lo, hi = AUTO_PASSES
    return max(lo, min(hi, round(budget / max(1, original_tokens))))


AUTO_NEFTUNE_ALPHA = 5.0
"""NEFTune's alpha for auto small-set runs (the paper's value for 7B models). Measured on ferry_short with the
rules above: reworded recall 68% → 71%, verbatim unchanged at 100%."""


def auto_variants(n_augmentable: int, original_tokens: int, budget: int = AUTO_TOKEN_BUDGET) -> int:
    """Rewrites per example for a small set: half the passes go to new wordings (1..5). Measured at the same
    budget: ferry_short 3 → 5 rewrites, reworded recall 71% → 75%; the Chiang Mai demo 1 → 3 rewrites (with
    NEFTune), 95% → 98% verbatim and 57% → 71% reworded."""
    if n_augmentable == 0 or n_augmentable > AUTO_SMALL_SET:
        return 0
    return max(1, min(AUTO_MAX_VARIANTS, auto_passes(original_tokens, budget) // 2 - 1))


AUTO_LORA_LAYERS_FRACTION = 0.5
"""Share of the layers (from the top) that get LoRA in auto small-set runs: the upper half. A step is 1.25x
(AVX2 CPU, 2026-12-06) to 1.63x (AVX-512 CPU, 2026-12-02) faster, since the backward pass stops halfway, and
the model learns as well: SmolLM2-135M, same seeds, verbatim/reworded, 2026-12-02: ferry_short 100/71 vs
100/68 with every layer, brewtide_long 100/69 vs 100/67, the Chiang Mai demo 100/71 vs 100/57; 2026-12-06:
ferry_short 100/79 vs 100/79, brewtide_long 100/67 vs 100/67. (A held-out orrin_station run with it, 50%
reworded against 75% with every layer, fell inside the 42-62% that every layer gave on later runs.)"""


def resolve_lora_layers(config: TrainConfig, n_variants: int, n_layers: int) -> int:
    """Layers (counted from the top) that get LoRA adapters."""
    if config.method != "lora":
        return n_layers
    ll = config.lora_layers
    if ll == "all":
        return n_layers
    if ll == "auto":
        frac = float((config.extra or {}).get("lora_fraction", AUTO_LORA_LAYERS_FRACTION))
        if n_variants > 0 and config.augment == "auto":
            return max(1, min(n_layers, round(n_layers * frac)))
        return n_layers
    return min(int(ll), n_layers)


def resolve_neftune(config: TrainConfig, n_variants: int, classifier: bool = False) -> float:
    """The run's NEFTune alpha: explicit value, else AUTO_NEFTUNE_ALPHA when the auto rules augment,
    AUTO_CLASSIFIER_NEFTUNE_ALPHA for classifier data."""
    if config.neftune_alpha != "auto":
        return float(config.neftune_alpha)
    if classifier:
        return AUTO_CLASSIFIER_NEFTUNE_ALPHA
    return AUTO_NEFTUNE_ALPHA if n_variants > 0 and config.augment == "auto" else 0.0


AUTO_REPLAY = 16
"""Replay pairs for auto small-set runs: about a tenth of an epoch's examples for 24-32 facts with their
rewrites (see tunery.train.replay for what they are and what they measured)."""
MAX_REPLAY = 40  # the bundled list holds more than this


def resolve_replay(config: TrainConfig, n_variants: int, english: bool) -> int:
    """Explicit value, else AUTO_REPLAY when the auto rules augment English chats and the run starts from the
    base model (a run continuing a fine-tune keeps its own behaviour), else 0."""
    if config.replay != "auto":
        return int(config.replay)
    auto_run = n_variants > 0 and config.augment == "auto" and english and not config.init_from
    return AUTO_REPLAY if auto_run and config.objective == "supervised" else 0


AUTO_PARAPHRASES = 0
"""Paraphrases per question that "auto" asks for: none yet, for their cost. Measured with paraphrase=3 (3 of
the 5 rule-based rewrites replaced, same trained tokens; trainer directly, SmolLM2-135M, verbatim 100%
everywhere, reworded recall against today's rules at the same seeds, 2026-12-08): ferry_short 64.3 -> 82.1
and 82.1 -> 78.6, brewtide_long 66.7 -> 68.8 and 70.8 -> 70.8 (mean 71.0 -> 75.1, the lowest run 64.3 ->
68.8); the held-out sets through the server 75% (orrin_station) and 76% (vellmora_garden), inside their
earlier 42-79% and 76-80%. But sampling them with transformers' generate takes ~120 s for 28 questions on
2 quiet cores (the few-shot prompt is prefilled for every sample), as long as the training itself; cached
per model and questions, so only a file's first run pays. It becomes the auto value once the prompt's
prefix is shared across samples (one prefill) and the cost is a few seconds."""


def resolve_paraphrase(config: TrainConfig, n_variants: int, english: bool) -> int:
    """Explicit value, else AUTO_PARAPHRASES when the auto rules augment English chats, else 0; never more
    than the run's rewrites per question (the paraphrases take their places)."""
    if config.paraphrase != "auto":
        return min(int(config.paraphrase), n_variants)
    auto_run = n_variants > 0 and config.augment == "auto" and english and config.objective == "supervised"
    return min(AUTO_PARAPHRASES, n_variants) if auto_run else 0


AUTO_LABEL_SMOOTHING = 0.1
"""Classifier data (every example trains one label token out of 2-8, then the end of the text, like babbage-002
discriminators' " yes"/" no"): this share of each label's target goes to the other labels, so they stay the
runners-up. Plain cross-entropy pushes the other label down with the rest of the vocabulary, and it often
leaves the top two logprobs ("yes" and " Yes", say), where an application reads P(" yes") vs P(" no")."""
MAX_LABELS = 8
AUTO_CLASSIFIER_MULTIPLIER = 1.0
"""Classifier data, LoRA, auto rate: the base rate rather than the short-run boost of auto_multiplier (2.8x for
the ~100 rows a discriminator set has). A discriminator must carry a few on-topic questions over to the topic,
not memorise them: at the boosted rate the training loss sits at the smoothing floor from the first epoch on.
Measured in bench/bench_discriminator.py (2026-12-07, 13 and 15 seed questions, held-out split at threshold
0.5): studio 73% → 80%, library 82% → 88% accuracy; with AUTO_CLASSIFIER_NEFTUNE_ALPHA too 87% / 90%.
Other data keeps auto_multiplier."""
AUTO_CLASSIFIER_NEFTUNE_ALPHA = 5.0
"""NEFTune noise for classifier data on auto (with AUTO_CLASSIFIER_MULTIPLIER), so a label cannot key on a
question's exact tokens. Same bench: split accuracy 80% / 88% → 87% / 90%; alone (boosted rate) 80% / 82%."""


def label_tokens(first_trained: list[int], n_trained: list[int]) -> list[int]:
    """The label tokens of classifier data, else []: every example trains exactly two tokens (a label and
    the end of text), and the labels take 2..MAX_LABELS values. Arguments are per example."""
    if not first_trained or any(n != 2 for n in n_trained):
        return []
    labels = sorted(set(first_trained))
    return labels if 2 <= len(labels) <= MAX_LABELS else []


def resolve_label_smoothing(config: TrainConfig, labels: list[int]) -> float:
    """Explicit value, else AUTO_LABEL_SMOOTHING for classifier data, else 0."""
    if config.label_smoothing != "auto":
        return float(config.label_smoothing)
    return AUTO_LABEL_SMOOTHING if labels else 0.0


def resolve_augment(config: TrainConfig, n_augmentable: int, original_tokens: int = 0) -> int:
    """Rewrites per example: explicit value, else auto_variants when n_epochs is auto, else none."""
    if config.augment != "auto":
        return int(config.augment)
    if config.n_epochs != "auto":
        return 0  # an explicit n_epochs means passes over the file as given: no added examples
    return auto_variants(n_augmentable, original_tokens, _token_budget(config))


def _token_budget(config: TrainConfig) -> int:
    return int((config.extra or {}).get("token_budget", AUTO_TOKEN_BUDGET))


def resolve_hyperparameters(config: TrainConfig, n_examples: int, n_variants: int = 0,
                            n_original: int | None = None, original_tokens: int = 0,
                            classifier: bool = False) -> dict:
    """Turn "auto" into numbers: {n_epochs, batch_size, learning_rate_multiplier, learning_rate}.

    n_examples is the training set as trained (originals plus rewrites); n_original the file's examples;
    classifier: the file is classifier data (label_tokens), which gets AUTO_CLASSIFIER_MULTIPLIER.
    """
    n_original = n_examples if n_original is None else n_original
    extra = config.extra or {}
    if config.n_epochs != "auto":
        n_epochs = int(config.n_epochs)
    elif n_variants > 0:
        passes = int(extra.get("passes", auto_passes(original_tokens, _token_budget(config))))
        n_epochs = max(1, passes // (n_variants + 1))
    else:
        n_epochs = auto_epochs(n_original)
    if config.batch_size != "auto":
        batch = int(config.batch_size)
    elif n_variants > 0:
        batch = max(int(extra.get("aug_batch", AUTO_AUG_BATCH)), auto_batch_size(n_examples))
    else:
        batch = auto_batch_size(n_examples)
    batch = max(1, min(batch, n_examples))
    total_steps = math.ceil(n_examples / batch) * n_epochs
    if config.learning_rate_multiplier != "auto":
        mult = float(config.learning_rate_multiplier)
    elif n_variants > 0 and config.method == "lora":
        mult = AUTO_AUG_MULTIPLIER
    elif classifier and config.method == "lora":
        mult = AUTO_CLASSIFIER_MULTIPLIER
    else:
        mult = auto_multiplier(total_steps, config.method)
    if config.learning_rate_multiplier == "auto" and "mult" in extra:
        mult = float(extra["mult"])
    return {"n_epochs": n_epochs, "batch_size": batch, "learning_rate_multiplier": mult,
            "learning_rate": BASE_LEARNING_RATE[config.method] * mult}


# --- preference fine-tuning (DPO) -----------------------------------------------------------------

# β = 0.1: the DPO paper's value for its dialogue/summarisation runs and TRL's default. β scales the implicit
# reward β·log(π/π_ref): smaller lets the model drift further from the reference, larger keeps it closer.
DEFAULT_DPO_BETA = 0.1


def _check_objective(config: TrainConfig) -> None:
    if config.objective not in ("supervised", "dpo"):
        raise InvalidRequest(f"objective (method type) must be 'supervised' or 'dpo', got {config.objective!r}",
                             param="method.type")
    b = config.beta
    _, lo, hi, _ = HYPERPARAMETER_RANGES["beta"]
    if b != "auto" and (not isinstance(b, (int, float)) or isinstance(b, bool) or not (lo < b <= hi)):
        raise InvalidRequest(f"beta must be 'auto' or a number in ({lo:g}, {hi:g}], got {b!r}",
                             param="method.dpo.hyperparameters.beta")
    w = config.nll_weight
    if w != "auto" and (not isinstance(w, (int, float)) or isinstance(w, bool) or not (0 <= w <= 10)):
        raise InvalidRequest(f"nll_weight must be 'auto' or a number in [0, 10], got {w!r}", param="nll_weight")


AUTO_NLL_WEIGHT = 1.0
"""DPO's "auto" likelihood term: the preferred outputs' mean token negative log-likelihood, weight 1 (RPO's
value, Pang et al. 2024; TRL's loss_type ["sigmoid", "sft"]). Plain DPO on pairs that differ only in an ending
learns to make the shared end-of-turn unlikely rather than to write the ending: measured with bench_dpo.py's
development split (SmolLM2-135M, LoRA, 31 pairs "answer + sign-off" over "answer", 16 prompts on other topics,
2026-12-06), the sign-off closed 0% of greedy answers with plain DPO at every setting tried — auto (β 0.1,
batch 1, lr 1e-3), batch 4 at lr 4e-4, 1e-4 and 4e-5, β 0.5 — which instead ran on past the answer or
repeated the sign-off (as it did with the end-of-turn token left out of the DPO term, Llama 3's remedy); with
weight 1 it closed 94% of them at auto (lr 1e-3), at lr 2e-4 with batch 1 and with batch 4."""


def resolve_objective(config: TrainConfig) -> dict:
    """{objective, beta, nll_weight}: numbers for DPO ("auto" → DEFAULT_DPO_BETA, AUTO_NLL_WEIGHT), absent
    for SFT."""
    if config.objective != "dpo":
        return {"objective": "supervised"}
    return {"objective": "dpo", "beta": DEFAULT_DPO_BETA if config.beta == "auto" else float(config.beta),
            "nll_weight": AUTO_NLL_WEIGHT if config.nll_weight == "auto" else float(config.nll_weight)}
