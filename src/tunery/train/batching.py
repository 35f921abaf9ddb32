"""Training data as the model sees it: examples read and encoded, epochs ordered, batches cut into
micro-batches and packed into single rows; the forward pass over a packed row. Shared by the supervised
loop (loop.py) and DPO (dpo.py).

Batches are padding-free: the examples of a micro-batch are concatenated into one row with position ids
restarting at each example, which transformers turns into a block-diagonal causal mask, so no compute is
spent on padding. Logits are computed only at positions whose next token is trained (assistant tokens),
which skips most of the vocabulary projection — on a small model that head is a large share of the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunery.errors import InvalidRequest
from tunery.train.callbacks import TrainCallbacks
from tunery.train.tokenize import Encoded, encode_example, truncate


def read_file_examples(path, what: str) -> list:
    """The valid examples of a JSONL file (tunery.data)."""
    from tunery.data.reading import read_examples

    if not Path(path).exists():
        raise InvalidRequest(f"{what} {path} does not exist", param=what)
    return list(read_examples(path))


def load_encoded(path, tokenizer, max_length: int, callbacks: TrainCallbacks, what: str,
                 examples: list | None = None, encode=encode_example, cut=truncate) -> list:
    """Encode a JSONL file's examples (or the given ones); warn about truncation and untrainable examples.

    encode(tokenizer, example) makes one item and cut(item, max_length) shortens it (returning it unchanged
    when it fits); an item has len(), .n_trained, .line, .truncated and .original_length (Encoded; dpo.Pair)."""
    if examples is None:
        examples = read_file_examples(path, what)
    out: list[Encoded] = []
    truncated: list[Encoded] = []
    empty: list[int] = []
    for ex in examples:
        enc = cut(encode(tokenizer, ex), max_length)
        if enc.truncated:
            truncated.append(enc)
        if enc.n_trained == 0 or len(enc) < 2:
            empty.append(enc.line)
            continue
        out.append(enc)
    if truncated:
        lines = ", ".join(f"line {e.line} ({e.original_length} tokens)" for e in truncated[:5])
        more = f" and {len(truncated) - 5} more" if len(truncated) > 5 else ""
        callbacks.on_event("warn", f"{what}: {len(truncated)} example(s) longer than {max_length} tokens were "
                                   f"truncated: {lines}{more}")
    if empty:
        empty = sorted(set(empty))
        callbacks.on_event("warn", f"{what}: {len(empty)} example(s) have no trained tokens (no assistant "
                                   f"message with weight 1 inside the length limit) and were skipped: lines "
                                   f"{', '.join(map(str, empty[:10]))}")
    if not out:
        raise InvalidRequest(f"{what} has no trainable examples", param=what)
    return out


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a pure function of (seed, epoch), so resume needs no saved order."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def micro_batches(examples: list, max_tokens: int) -> list[list]:
    """Split one batch into consecutive groups of at most max_tokens tokens (at least one example each)."""
    groups: list[list[Encoded]] = [[]]
    used = 0
    for e in examples:
        if groups[-1] and used + len(e) > max_tokens:
            groups.append([])
            used = 0
        groups[-1].append(e)
        used += len(e)
    return groups if groups[0] else []


@dataclass
class Packed:
    input_ids: object  # LongTensor [1, L]
    position_ids: object  # LongTensor [1, L]
    keep: object  # LongTensor [K]: positions whose next token is trained
    targets: object  # LongTensor [K]
    n_tokens: int
    seq: object = None  # LongTensor [K]: which of the packed examples each kept position belongs to
    attention_mask: object = None  # BoolTensor [1, 1, L, L] when a prefix is shared, else None (block-causal)


# A prefix shorter than this is not worth the dense mask it needs.
MIN_SHARED_PREFIX = 8


def shared_prefix(examples: list[Encoded]) -> int:
    """Leading tokens that every example of a group has in common and that nothing trains on.

    Chats of one file usually start with the same system prompt (and the template's turn markers): ~40% of
    a short fact example's tokens. Packed once instead of once per example, with each example attending to
    it, the computed loss and gradients are the same, for fewer tokens. The prefix stops one token before
    an example's first trained token, so no shared position predicts a trained token."""
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    n = min(len(e) for e in examples)
    p = 0
    while p < n and all(e.input_ids[p] == first[p] for e in examples[1:]):
        p += 1
    for e in examples:
        trained = next((t for t in range(1, len(e)) if e.loss_mask[t]), len(e))
        p = min(p, trained - 1)
    return p if p >= MIN_SHARED_PREFIX else 0


def pack(examples: list[Encoded], device, share_prefix: bool = True) -> Packed:
    """One row of the examples, position ids restarting at each; with share_prefix a common untrained
    prefix (shared_prefix) is packed once, and a block mask lets every example see it and itself."""
    import torch

    p = shared_prefix(examples) if share_prefix else 0
    ids: list[int] = list(examples[0].input_ids[:p])
    pos: list[int] = list(range(p))
    segment: list[int] = [-1] * p
    keep: list[int] = []
    tgt: list[int] = []
    seq: list[int] = []
    for j, e in enumerate(examples):
        off = len(ids) - p  # row index of the example's token 0 (its first p tokens are the shared ones)
        ids.extend(e.input_ids[p:])
        pos.extend(range(p, len(e)))
        segment.extend([j] * (len(e) - p))
        for t in range(max(1, p + 1), len(e)):
            if e.loss_mask[t]:
                keep.append(off + t - 1)
                tgt.append(e.input_ids[t])
                seq.append(j)
    mask = None
    if p:
        seg = torch.tensor(segment, device=device)
        causal = torch.ones(len(ids), len(ids), dtype=torch.bool, device=device).tril()
        mask = (causal & ((seg[None, :] == -1) | (seg[None, :] == seg[:, None])))[None, None]
    return Packed(torch.tensor([ids], device=device), torch.tensor([pos], device=device),
                  torch.tensor(keep, device=device), torch.tensor(tgt, device=device), len(ids),
                  torch.tensor(seq, device=device), mask)


def forward_logits(model, p: Packed, autocast):
    """fp32 logits [K, vocab] at the trained positions only (the head is not run anywhere else)."""
    with autocast():
        out = model(input_ids=p.input_ids, position_ids=p.position_ids, attention_mask=p.attention_mask,
                    logits_to_keep=p.keep, use_cache=False)
    return out.logits[0].float()
