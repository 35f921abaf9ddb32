"""Conversion for llama.cpp, written on the `gguf` package: a PEFT LoRA adapter → a GGUF LoRA, and a
full-weights (Llama-architecture) model directory → a GGUF model.

What llama.cpp needs (facts from its own converters):
  * tensor names are the base GGUF's (`blk.N.attn_q.weight` …); a LoRA pair is stored as
    `<name>.lora_a` (A, [r, in]) and `<name>.lora_b` (B, [out, r]), with `general.type = adapter`,
    `adapter.type = lora` and `adapter.lora.alpha`; llama.cpp scales B·A by alpha / r;
  * Llama-architecture GGUFs store q_proj/k_proj with their rows permuted for llama.cpp's rotary
    layout (transformers undoes that when it loads a GGUF), so the output rows of q/k — B's rows for a
    LoRA, A stays as it is — get the same permutation. Gemma 3 (NeoX rotary) is not permuted.
Files are written beside their source, atomically (a temporary name, then a rename); export_gguf writes
them into a folder of their own for use outside tunery (`tunery export --gguf`).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from tunery.errors import InvalidRequest, ModelUnavailable
from tunery.train.checkpoint import META_FILE, is_adapter_dir

LORA_GGUF = "adapter.gguf"
MODEL_GGUF = "model.gguf"
_PERMUTED_ARCHES = {"llama"}


# --- base models ------------------------------------------------------------------------

def base_gguf(base_model: str, settings=None) -> Path | None:
    """The GGUF file of a base model, or None when it has none (a local or Hugging Face directory).

    Bundled models are read where their package installed them; an assembled one (Gemma 3) is
    assembled once into the model cache, since its package only keeps the chunks."""
    from tunery.models import registry

    spec = registry.resolve(base_model, settings).spec
    if spec.kind != "gguf_package":
        return None
    module, fname = spec.source.split(":", 1)
    pkg = registry._package_dir(module)
    if pkg is not None and (pkg / fname).exists():
        return pkg / fname
    cached = registry.cache_dir(spec, settings) / fname
    if cached.exists():
        return cached
    if not spec.assemble or pkg is None:
        return None
    import importlib

    mod_name, func = spec.assemble.split(":", 1)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp")
    try:
        getattr(importlib.import_module(mod_name), func)(tmp)
    except Exception as exc:  # the package's own assembly: report its reason, whatever it is
        tmp.unlink(missing_ok=True)
        raise ModelUnavailable(f"could not assemble {fname} for {spec.name!r}: {exc}", param="model") from exc
    os.replace(tmp, cached)
    return cached


class _BaseInfo:
    """What conversion needs from a base GGUF: architecture, head counts, tensor names and shapes.

    Read with a small header walk of our own: gguf.GGUFReader builds an array view per vocabulary
    entry (tens of seconds for a 49k-token vocabulary); here the arrays are only skipped."""

    def __init__(self, path: Path):
        kv, self.shapes = read_gguf_header(path)
        self.arch = str(kv["general.architecture"])
        self.n_blocks = int(kv[f"{self.arch}.block_count"])
        self.n_head = int(kv[f"{self.arch}.attention.head_count"])
        self.n_head_kv = int(kv.get(f"{self.arch}.attention.head_count_kv", self.n_head))


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_header(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A GGUF file's scalar/string metadata (arrays skipped) and its tensors' shapes (innermost first)."""
    import struct

    with open(path, "rb") as f:
        def read(fmt):
            size = struct.calcsize("<" + fmt)
            return struct.unpack("<" + fmt, f.read(size))[0]

        def string():
            return f.read(read("Q")).decode("utf-8", "replace")

        def value(vtype):
            if vtype == 8:
                return string()
            if vtype == 9:
                etype, n = read("I"), read("Q")
                if etype == 8:
                    for _ in range(n):
                        f.seek(read("Q"), 1)
                else:
                    f.seek(struct.calcsize("<" + _SCALARS[etype]) * n, 1)
                return None
            return read(_SCALARS[vtype])

        if f.read(4) != b"GGUF":
            raise ModelUnavailable(f"{path} is not a GGUF file", param="model")
        read("I")
        n_tensors, n_kv = read("Q"), read("Q")
        kv = {}
        for _ in range(n_kv):
            key = string()
            kv[key] = value(read("I"))
        shapes = {}
        for _ in range(n_tensors):
            name = string()
            dims = tuple(read("Q") for _ in range(read("I")))
            read("I"), read("Q")  # type, offset
            shapes[name] = dims
    return kv, shapes


def _permute_rows(w, n_head: int):
    """llama.cpp's q/k row order: within each head, interleaved halves become contiguous pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf_name: str, arch: str, n_blocks: int) -> str | None:
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    return gguf.get_tensor_name_map(arch_id, n_blocks).get_name(hf_name, try_suffixes=(".weight",))


def _atomic(out: Path):
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    return tmp


# --- LoRA adapters ----------------------------------------------------------------------

def lora_to_gguf(adapter_dir: Path | str, base: Path | str, out: Path | str | None = None) -> Path:
    """Write `adapter_dir`'s PEFT LoRA as a GGUF LoRA for the base GGUF `base` (default: adapter.gguf
    beside the adapter). Raises ModelUnavailable naming what does not fit."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    out = Path(out) if out else adapter_dir / LORA_GGUF
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot read the LoRA adapter in {adapter_dir}: {exc}", param="model") from exc
    if cfg.get("use_dora") or cfg.get("modules_to_save"):
        raise ModelUnavailable(f"the adapter in {adapter_dir} uses DoRA or modules_to_save, which llama.cpp "
                               "cannot load as a LoRA", param="model")
    info = _BaseInfo(Path(base))
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", r))
    if cfg.get("use_rslora"):
        alpha *= math.sqrt(r)  # rsLoRA scales by alpha/sqrt(r); llama.cpp always divides by r
    tmp = _atomic(out)
    writer = gguf.GGUFWriter(str(tmp), info.arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    count = 0
    for key in sorted(weights):
        if not key.endswith(".lora_A.weight"):
            continue
        module = re.sub(r"^base_model\.model\.", "", key[: -len(".lora_A.weight")])
        a = weights[key].astype(np.float32)
        b = weights[key.replace(".lora_A.weight", ".lora_B.weight")].astype(np.float32)
        name = _gguf_name(module + ".weight", info.arch, info.n_blocks)
        if name is None or name not in info.shapes:
            raise ModelUnavailable(f"the adapter targets {module!r}, which has no tensor in the base GGUF",
                                   param="model")
        n_in, n_out = info.shapes[name][0], info.shapes[name][-1]
        if a.shape[1] != n_in or b.shape[0] != n_out:
            raise ModelUnavailable(f"the adapter's {module} is {b.shape[0]}x{a.shape[1]}, the base GGUF's "
                                   f"{name} is {n_out}x{n_in}: not an adapter of this base", param="model")
        if info.arch in _PERMUTED_ARCHES and name.endswith(("attn_q.weight", "attn_k.weight")):
            b = _permute_rows(b, info.n_head if "attn_q" in name else info.n_head_kv)
        writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a))
        writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b))
        count += 1
    if not count:
        raise ModelUnavailable(f"the adapter in {adapter_dir} has no LoRA weights", param="model")
    _finish(writer, tmp, out)
    return out


def _finish(writer, tmp: Path, out: Path) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)


# --- full models ------------------------------------------------------------------------

def model_to_gguf(model_dir: Path | str, out: Path | str | None = None, *, base: Path | str | None = None,
                  f32: bool = False) -> Path:
    """Write a Llama-architecture safetensors model directory as a GGUF model (f16 matrices, f32
    norms; f32=True keeps every weight in f32, exact to the source). The tokenizer is the directory's tokenizer.json (byte-level BPE only), with the pre-tokenizer name of
    `base` (the base model's GGUF) when given."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    out = Path(out) if out else model_dir / MODEL_GGUF
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ModelUnavailable(f"only Llama-architecture models convert to GGUF here, {model_dir} is "
                               f"{cfg.get('model_type')!r}", param="model")
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    n_layers, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    rope = cfg.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    tmp = _atomic(out)
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(model_dir.name)
    writer.add_block_count(n_layers)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim * n_head != hidden:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if f32 else gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, model_dir, int(cfg["vocab_size"]), Path(base) if base else None)
    for key in sorted(tensors):
        name = _gguf_name(key, "llama", n_layers)
        if name is None:
            if "rotary_emb" in key:
                continue
            raise ModelUnavailable(f"{model_dir}: no GGUF name for tensor {key!r}", param="model")
        w = tensors[key].astype(np.float32)
        if name.endswith("attn_q.weight"):
            w = _permute_rows(w, n_head)
        elif name.endswith("attn_k.weight"):
            w = _permute_rows(w, n_head_kv)
        writer.add_tensor(name, w if w.ndim == 1 or f32 else w.astype(np.float16))
    _finish(writer, tmp, out)
    return out


def _add_tokenizer(writer, model_dir: Path, vocab_size: int, base: Path | None) -> None:
    import gguf

    tj = json.loads((model_dir / "tokenizer.json").read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ModelUnavailable(f"{model_dir}: only byte-level BPE tokenizers convert without a base GGUF",
                               param="model")
    tcfg = {}
    if (model_dir / "tokenizer_config.json").exists():
        tcfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    vocab = dict(model["vocab"])
    special = {}
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        special[t["id"]] = t.get("special", False)
    by_id = {i: s for s, i in vocab.items()}
    toks, types = [], []
    for i in range(vocab_size):
        s = by_id.get(i, f"[PAD{i}]")
        toks.append(s)
        types.append(gguf.TokenType.CONTROL if special.get(i) else
                     gguf.TokenType.USER_DEFINED if i in special else
                     gguf.TokenType.UNUSED if i not in by_id else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    pre = read_gguf_header(base)[0].get("tokenizer.ggml.pre") if base is not None else None
    if pre:  # the base's pre-tokenizer name (llama.cpp's own text tokenization; prompts arrive as ids)
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(toks)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_bos_token(False)
    for attr, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                      ("unk_token", writer.add_unk_token_id), ("pad_token", writer.add_pad_token_id)):
        tok = tcfg.get(attr)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if isinstance(tok, str) and tok in vocab:
            add(vocab[tok])
    template = tcfg.get("chat_template")
    if not template and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text()
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def convert_for_llamacpp(model_dir: Path | str, base_model: str, settings=None) -> Path | None:
    """A finished job's weights as GGUF beside them (adapter.gguf for a LoRA, model.gguf for full
    weights of a Llama-architecture model); None when the base has no GGUF to pair a LoRA with or the
    architecture does not convert (the torch engine serves those)."""
    model_dir = Path(model_dir)
    if is_adapter_dir(model_dir):
        base = base_gguf(base_model, settings)
        return lora_to_gguf(model_dir, base) if base is not None else None
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        return None
    return model_to_gguf(model_dir, base=base_gguf(base_model, settings))


# --- export for use outside tunery (`tunery export --gguf`) ------------------------------

def export_gguf(src: Path | str, out: Path | str, *, ollama: bool = False) -> Path:
    """GGUF for llama.cpp with the same conversion the server uses: a LoRA → out/adapter.gguf (the base
    stays the base model's own GGUF), full weights → out/model.gguf. With ollama=True also a Modelfile:
    `FROM <base GGUF>` + `ADAPTER ./adapter.gguf`, or `FROM ./model.gguf` (Ollama's Modelfile syntax)."""
    src, out = Path(src), Path(out)
    meta_path = src / META_FILE
    if not meta_path.exists():
        raise InvalidRequest(f"{src} is not a tunery model directory (no {META_FILE}); pass a run's final/ "
                             "or checkpoints/step-N folder", param="dir")
    if out.exists() and any(out.iterdir()):
        raise InvalidRequest(f"{out} already exists and is not empty", param="output")
    base_model = json.loads(meta_path.read_text())["base_model"]
    base = base_gguf(base_model)
    out.mkdir(parents=True, exist_ok=True)
    if is_adapter_dir(src):
        if base is None:
            raise InvalidRequest(f"the base model {base_model!r} has no GGUF file to pair a GGUF LoRA with; "
                                 "export with --merge and convert the merged model instead", param="dir")
        lora_to_gguf(src, base, out / LORA_GGUF)
        modelfile = f"FROM {base}\nADAPTER ./{LORA_GGUF}\n"
    else:
        model_to_gguf(src, out / MODEL_GGUF, base=base)
        modelfile = f"FROM ./{MODEL_GGUF}\n"
    if ollama:
        (out / "Modelfile").write_text(modelfile)
    return out
