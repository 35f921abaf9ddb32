"""A tiny Gemma-like base model built offline: a tokenizer with Gemma 3's pipeline (SentencePiece-style BPE
with byte fallback, `▁` for spaces, `<bos>` added in front, `<start_of_turn>`/`<end_of_turn>` specials, no
chat template) trained on a few English and Thai sentences, and a 2-layer random Gemma 3 text model."""

from __future__ import annotations

import json
from pathlib import Path

# Gemma's order for its first specials (pad 0, eos 1, bos 2, unk 3, mask 4), then its turn tokens.
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]

CORPUS = [
    "The ferry leaves the harbour at seven in the morning.",
    "What time does the museum open on Sundays?",
    "The island has one hospital and three schools.",
    "user model system assistant question answer",
    # Thai, so some Thai syllables are merged tokens and the rest fall back to bytes (three per character).
    "เรือเฟอร์รี่ออกจากท่าเรือเวลาเจ็ดโมงเช้า",
    "ค่าโดยสารคนละ 180 บาท",
    "ตลาดกลางคืนเปิดทุกวันพฤหัสบดี",
]


def build_gemma_like_tokenizer(out: Path, *, eos: bool = True):
    """Save the tokenizer into `out` and return it (a PreTrainedTokenizerFast without a chat template)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                                            show_progress=False))
    # Byte-fallback pieces <0x00>..<0xFF> are ordinary vocabulary entries (as in Gemma), not added tokens.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", 2)])
    kw = dict(bos_token="<bos>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    if eos:
        kw["eos_token"] = "<eos>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    fast.chat_template = None
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def build_tiny_gemma(out: Path, *, eos: bool = True, seed: int = 0) -> Path:
    """A randomly initialised 2-layer Gemma 3 text model with the Gemma-like tokenizer."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = build_gemma_like_tokenizer(out, eos=eos)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, sliding_window=64,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0, eos_token_id=1 if eos else None,
        bos_token_id=2, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    Gemma3ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    return out
