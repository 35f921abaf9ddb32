"""Every environment variable tunery reads has its one home here: a field of `Settings` or of one of its
sections, with the variable's name, type, default and meaning beside it (README's configuration table is
checked against `VARIABLES`). The CLI reads the environment once (`Settings.from_env()`) and passes the
object into each part; nothing else in tunery reads `os.environ`.

Child processes (the worker's trainer, torchrun's ranks) get the parent's settings back through their
environment: the parent sends `settings.to_env()`, the child installs it with `apply_env()` so that
code which falls back to `get_settings()` sees the same home, database and device.

`LIBRARY_ENV` holds the few variables tunery sets (unless the user did) for the libraries it loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

# --- one declaration per variable ---------------------------------------------------------------


def _var(env: str, kind: str, meaning: str, default=None, *, shown: str | None = None, factory=None):
    """A settings field read from `env`. kind: str | int | float | bool | path | paths; shown: the default
    as the documentation states it, when it is not the literal value (derived from another setting)."""
    meta = {"env": env, "kind": kind, "meaning": meaning, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_FALSE = ("0", "false", "no", "off")


def _parse(name: str, kind: str, raw: str):
    raw = raw.strip()
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be {'an integer' if kind == 'int' else 'a number'}, got {raw!r}") from exc
    if kind == "bool":
        return raw.lower() not in _FALSE
    if kind == "path":
        return Path(raw).expanduser().resolve()
    if kind == "paths":
        return tuple(Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip())
    return raw


def _format(kind: str, value) -> str:
    if kind == "bool":
        return "1" if value else "0"
    if kind == "paths":
        return os.pathsep.join(str(p) for p in value)
    return str(value)


def _env_fields(cls):
    return [f for f in fields(cls) if "env" in f.metadata]


def _read(cls, environ: Mapping[str, str]) -> dict:
    """The fields of cls whose variable is set (an empty or blank value counts as unset)."""
    out = {}
    for f in _env_fields(cls):
        raw = environ.get(f.metadata["env"])
        if raw is not None and raw.strip():
            out[f.name] = _parse(f.metadata["env"], f.metadata["kind"], raw)
    return out


def _write(section) -> dict[str, str]:
    return {f.metadata["env"]: _format(f.metadata["kind"], getattr(section, f.name))
            for f in _env_fields(type(section)) if getattr(section, f.name) is not None}


# --- sections -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComputeSettings:
    """Where the trainer and the inference engine run."""

    device: str = _var("TUNERY_DEVICE", "str", "`auto` (cuda, then mps, then cpu), `cpu`, `cuda`, `cuda:1`, `mps`",
                       "auto")
    num_threads: int = _var("TUNERY_NUM_THREADS", "int", "torch CPU threads; 0 means one per core this process "
                            "may use (the trainer leaves one of them to the server and worker: cores − 1, at "
                            "least 1)", 0, shown="`0` (cores)")
    train_processes: int = _var("TUNERY_TRAIN_PROCESSES", "int", "processes one training run is split over "
                                "(torch.distributed data parallelism); 0 means auto: one per GPU, or on CPU one "
                                "per core (up to 4, one thread each) for runs estimated at over 40 s", 0,
                                shown="`0` (auto)")


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker runs jobs."""

    concurrency: int = _var("TUNERY_WORKER_CONCURRENCY", "int", "jobs trained at once by one worker "
                            "(1 suits a CPU or one GPU)", 1)
    lease_seconds: int = _var("TUNERY_WORKER_LEASE_SECONDS", "int", "a claimed job belongs to its worker this "
                              "long past its last heartbeat (at least 2)", 30)
    poll_seconds: float = _var("TUNERY_WORKER_POLL_SECONDS", "float", "how often an idle worker looks for queued "
                               "jobs and a busy one re-reads its jobs' status (bounds how fast cancel and pause "
                               "take effect)", 1.0)
    max_attempts: int = _var("TUNERY_WORKER_MAX_ATTEMPTS", "int", "a job whose trainer crashes (or whose worker "
                             "dies) this many times fails", 3)
    prestart: bool = _var("TUNERY_WORKER_PRESTART", "bool", "keep one training child started ahead with torch "
                          "imported, so a claimed job starts at once (0 turns it off)", True)
    procs_per_job: int | str = _var("TUNERY_WORKER_PROCS_PER_JOB", "str", "processes (torch.distributed ranks) "
                                    "one job trains in: a count, or `auto`: `TUNERY_TRAIN_PROCESSES` when set, else "
                                    "the trainer's auto (one per visible GPU on CUDA; on CPU one per core, up to 4, "
                                    "for runs estimated at over 40 s), and 1 when concurrency is above 1", "auto")
    nnodes: int = _var("TUNERY_WORKER_NNODES", "int", "machines (nodes) one job trains on: node 0's worker "
                       "claims jobs, the workers of node ranks 1.. join its runs (see Several machines)", 1)
    node_rank: int = _var("TUNERY_WORKER_NODE_RANK", "int", "this worker's node: 0 claims jobs and holds "
                          "their lease; 1 to nnodes − 1 train ranks of node 0's runs and claim nothing", 0)
    rdzv_endpoint: str | None = _var("TUNERY_WORKER_RDZV_ENDPOINT", "str", "HOST:PORT of node 0 where a "
                                     "multi-node run's rendezvous store listens (torchrun's --rdzv-endpoint; "
                                     "the port defaults to 29400); required when nnodes is above 1", None,
                                     shown="none")
    # Not from the environment: set by code (tests, the embedded worker).
    cancel_grace_seconds: float = 5.0
    """After a cancel, the child gets this long to stop by itself before it is killed."""
    pause_grace_seconds: float = 300.0
    """After a pause, the child gets this long to save its resume state before it is killed."""
    owner: str | None = None
    """Lease owner id; default host:pid:random."""
    extra_env: dict = field(default_factory=dict)
    """Environment for the training child on top of the settings."""

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.lease_seconds < 2:
            raise ValueError("TUNERY_WORKER_LEASE_SECONDS must be at least 2")
        object.__setattr__(self, "procs_per_job", parse_procs(self.procs_per_job))
        if not 1 <= self.nnodes <= MAX_NODES:
            raise ValueError(f"TUNERY_WORKER_NNODES (--nnodes) must be an integer in [1, {MAX_NODES}], "
                             f"got {self.nnodes!r}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"TUNERY_WORKER_NODE_RANK (--node-rank) must be in [0, nnodes − 1 = "
                             f"{self.nnodes - 1}], got {self.node_rank!r}")
        if self.nnodes > 1:
            if not self.rdzv_endpoint:
                raise ValueError("TUNERY_WORKER_RDZV_ENDPOINT (--rdzv-endpoint) is required when nnodes is "
                                 "above 1: node 0's HOST:PORT, the same on every node")
            host, port = parse_endpoint(self.rdzv_endpoint)
            object.__setattr__(self, "rdzv_endpoint", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            if self.concurrency != 1:
                raise ValueError("a multi-node worker (nnodes above 1) trains one job at a time: its runs "
                                 "share one rendezvous port; set concurrency 1")

    @property
    def heartbeat_seconds(self) -> float:
        return max(0.5, self.lease_seconds / 3)


MAX_PROCS_PER_JOB = 64
MAX_NODES = 64
DEFAULT_RDZV_PORT = 29400
"""torchrun's default --rdzv-endpoint port."""


def parse_endpoint(text: str) -> tuple[str, int]:
    """HOST:PORT (or HOST, port 29400; [v6-address]:PORT) as (host, port); ValueError naming the setting."""
    raw = str(text).strip()
    host, sep, port = raw.rpartition(":") if not raw.endswith("]") else (raw, "", "")
    if not sep or ("]" not in host and ":" in host):  # no port, or a bare IPv6 address
        host, port = raw, str(DEFAULT_RDZV_PORT)
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        number = 0
    if not host or not 1 <= number <= 65535:
        raise ValueError(f"TUNERY_WORKER_RDZV_ENDPOINT (--rdzv-endpoint) must be HOST:PORT, got {text!r}")
    return host, number


def parse_procs(value) -> int | str:
    """A processes-per-job value ("auto", or a count as int or text) as "auto" or an int; ValueError if neither."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if isinstance(value, bool) or not 1 <= n <= MAX_PROCS_PER_JOB:
        raise ValueError(f"TUNERY_WORKER_PROCS_PER_JOB (--procs-per-job) must be 'auto' or an integer in "
                         f"[1, {MAX_PROCS_PER_JOB}], got {value!r}")
    return n


@dataclass(frozen=True)
class InferenceSettings:
    """How models are served (the router and its backends)."""

    backend: str = _var("TUNERY_INFERENCE_BACKEND", "str", "`auto` (llama.cpp on CPU; on a GPU vLLM where "
                        "its interpreter is found, else the torch engine), `llamacpp`, `vllm` or `torch`", "auto")
    max_batch: int = _var("TUNERY_MAX_BATCH", "int", "sequences decoded together per model", 16)
    max_queue: int = _var("TUNERY_MAX_QUEUE", "int", "sequences allowed to wait; beyond it requests get 429", 64)
    max_adapters: int = _var("TUNERY_MAX_ADAPTERS", "int", "LoRA adapters kept attached per base model (least "
                             "recently used leave)", 16)
    max_models: int = _var("TUNERY_MAX_MODELS", "int", "base models and full fine-tunes kept loaded", 3)
    dtype: str = _var("TUNERY_INFERENCE_DTYPE", "str", "`auto` (bf16 where the CPU/GPU has it, else fp32), "
                      "`float32`, `bfloat16`, `float16`", "auto")
    llamacpp_ctx: int = _var("TUNERY_LLAMACPP_CTX", "int", "llama.cpp's KV window shared by a model's slots "
                             "(at least the model's context length)", 16384)
    # A string, not a resolved path: resolving a venv's python symlink would leave the venv.
    vllm_python: str | None = _var("TUNERY_VLLM_PYTHON", "str", "the Python interpreter that has vLLM (its "
                                    "own venv: vLLM pins its own torch); the vLLM backend runs its OpenAI server "
                                    "with it", None, shown="`.venv-vllm/bin/python` of the checkout (`make vllm`)")
    vllm_args: str = _var("TUNERY_VLLM_ARGS", "str", "extra arguments for vLLM's server, e.g. "
                          "`--gpu-memory-utilization 0.5`", "", shown="none")
    vllm_max_lora_rank: int = _var("TUNERY_VLLM_MAX_LORA_RANK", "int", "largest LoRA rank the vLLM backend "
                                   "accepts (vLLM reserves memory for it)", 64)
    vllm_cpu_kv_gib: int = _var("TUNERY_VLLM_CPU_KV_GIB", "int", "KV cache of a vLLM server on CPU, in GiB",
                                1)


@dataclass(frozen=True)
class ClientSettings:
    """How the client commands (`tunery chat --base-url`, `data generate`, `eval`, `guard`) reach a server."""

    base_url: str | None = _var("TUNERY_BASE_URL", "str", "the tunery server the client commands talk to "
                                "(`tunery chat` without it runs the model in-process)", None,
                                shown="`http://127.0.0.1:8000/v1`")
    api_key: str | None = _var("TUNERY_API_KEY", "str", "bearer token of the client commands", None,
                               shown="`$OPENAI_API_KEY`")
    openai_api_key: str | None = _var("OPENAI_API_KEY", "str", "used when `TUNERY_API_KEY` is unset "
                                      "(a server without keys accepts any token)", None, shown="none")

    @property
    def server(self) -> str:
        return self.base_url or "http://127.0.0.1:8000/v1"  # a local `tunery serve`

    @property
    def bearer(self) -> str:
        # A tunery server without API keys accepts any bearer token; the SDK insists on one.
        return self.api_key or self.openai_api_key or "tunery"


# --- the settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where tunery keeps its state and how each part behaves."""

    home: Path = _var("TUNERY_HOME", "path", "all state: database, files, checkpoints, model cache",
                      shown="`~/.tunery`")
    database_url: str = _var("TUNERY_DATABASE_URL", "str", "SQLAlchemy URL, e.g. `postgresql+psycopg://user@host/db` "
                             "to scale", shown="SQLite under `TUNERY_HOME`")
    model_cache: Path = _var("TUNERY_MODEL_CACHE", "path", "converted base models (can be shared)",
                             shown="`$TUNERY_HOME/models`")
    max_upload_bytes: int = _var("TUNERY_MAX_UPLOAD_BYTES", "int", "largest accepted file upload (larger: 413)",
                                 512 * 1024 * 1024, shown="`536870912` (512 MB)")
    default_org: str = _var("TUNERY_DEFAULT_ORG", "str", "the organization served when no API keys exist",
                            "personal")
    model_dirs: tuple[Path, ...] = _var("TUNERY_MODEL_DIRS", "paths", "`:`-separated directories whose model "
                                        "subdirectories API callers may name once keys exist (without keys, on "
                                        "loopback, any local directory)", (), shown="none")
    compute: ComputeSettings = field(default_factory=ComputeSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    extra: dict = field(default_factory=dict)

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def aliases_file(self) -> Path:
        return self.home / "aliases.json"

    @staticmethod
    def default_database_url(home: Path) -> str:
        return f"sqlite:///{home / 'tunery.db'}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, worker: Mapping | None = None,
                 **overrides) -> "Settings":
        """Settings from the environment (os.environ unless given); overrides win, and an overridden home
        also moves the defaults derived from it (database, model cache). `worker`: WorkerSettings fields
        given on a command line (None: not given), which win over the environment before the section's
        fields are checked together (e.g. --rdzv-endpoint with TUNERY_WORKER_NNODES=2)."""
        env = os.environ if environ is None else environ
        if isinstance(worker, WorkerSettings):  # a whole section: an override like any other
            overrides["worker"], worker = worker, None
        top = _read(cls, env)
        home = Path(overrides.pop("home", None) or top.get("home") or Path.home() / ".tunery").expanduser().resolve()
        top.update(home=home, database_url=top.get("database_url") or cls.default_database_url(home),
                   model_cache=top.get("model_cache") or home / "models")
        s = cls(**top, compute=ComputeSettings(**_read(ComputeSettings, env)),
                worker=WorkerSettings(**{**_read(WorkerSettings, env),
                                         **{k: v for k, v in (worker or {}).items() if v is not None}}),
                inference=InferenceSettings(**_read(InferenceSettings, env)),
                client=ClientSettings(**_read(ClientSettings, env)))
        return replace(s, **overrides) if overrides else s

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for a child process (see apply_env)."""
        env = _write(self)
        for section in (self.compute, self.worker, self.inference, self.client):
            env.update(_write(section))
        return env

    def ensure_dirs(self) -> "Settings":
        for p in (self.home, self.files_dir, self.jobs_dir, self.model_cache):
            p.mkdir(parents=True, exist_ok=True)
        return self


def get_settings() -> Settings:
    """Settings from the current environment (read fresh each call, so tests can change env)."""
    return Settings.from_env()


def variables() -> list[dict]:
    """Every variable tunery reads: name, kind, default (as documented) and meaning, in declaration order."""
    out = []
    for cls in (Settings, ComputeSettings, WorkerSettings, InferenceSettings, ClientSettings):
        for f in _env_fields(cls):
            m = f.metadata
            default = m["shown"] if m["shown"] is not None else f"`{_format(m['kind'], f.default)}`"
            out.append({"name": m["env"], "kind": m["kind"], "default": default, "meaning": m["meaning"]})
    return out


# --- the process environment ------------------------------------------------------------------------

LIBRARY_ENV = {
    # Set unless the user set them: tunery shows its own progress, the libraries' messages go to logs.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    # The tokenizers library warns (and disables itself) when a process forks after using it.
    "TOKENIZERS_PARALLELISM": "false",
}
PASSIVE_THREADS = {
    # torch's OpenMP threads otherwise spin while waiting; on a CPU shared with other processes a 2-thread
    # training step then ran 10-20x slower than with 1 thread (measured: 49 s vs 4.8 s; passive: 2.5 s).
    # It takes effect only if set before torch is imported in that process.
    "OMP_WAIT_POLICY": "PASSIVE",
}
OFFLINE = {"HF_HUB_OFFLINE": "1"}  # models tunery loads are local; never reach for the hub


def set_library_env(*extra: Mapping[str, str]) -> dict[str, str]:
    """Put LIBRARY_ENV (and any `extra` groups, e.g. PASSIVE_THREADS) into this process's environment where
    the user has not set them; returns the values now in effect for those names."""
    wanted = {**LIBRARY_ENV}
    for group in extra:
        wanted.update(group)
    for k, v in wanted.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in wanted}


def apply_env(env: Mapping[str, str]) -> None:
    """Install settings sent by a parent (Settings.to_env() plus library variables) in this process."""
    os.environ.update(env)


def child_env(env: Mapping[str, str] = ()) -> dict[str, str]:
    """The environment for a child process: this one's, with PASSIVE_THREADS unless set, then `env`."""
    out = {**PASSIVE_THREADS, **os.environ}
    out.update(env)
    return out


@dataclass(frozen=True)
class LaunchedRank:
    """This process's place in a multi-process run, from the variables torchrun sets (torch.distributed's
    env:// protocol: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), which torch reads itself."""

    rank: int
    world: int
    local_rank: int
    parent_pid: int = 0
    """Set (TUNERY_PARENT_PID) when tunery's own rank 0 (or a worker of another node) started this rank: it
    dies with that parent."""
    local_world: int = 0
    """The ranks on this machine (LOCAL_WORLD_SIZE; the whole world when unset)."""


def launched_rank(environ: Mapping[str, str] | None = None) -> LaunchedRank | None:
    """The launcher's variables when this process is one rank of several, else None."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "0") or 0)
        if world < 2:
            return None
        rank = int(env["RANK"])
        local_rank = env.get("LOCAL_RANK", "").strip()
        return LaunchedRank(rank=rank, world=world, local_rank=int(local_rank) if local_rank else rank,
                            parent_pid=int(env.get("TUNERY_PARENT_PID", "0") or 0),
                            local_world=int(env.get("LOCAL_WORLD_SIZE", "0") or 0) or world)
    except (KeyError, ValueError):
        raise ValueError("WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers: start the ranks "
                         "with torchrun") from None


def rank_master(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """MASTER_ADDR and MASTER_PORT: where rank 0's rendezvous store listens."""
    env = os.environ if environ is None else environ
    return env.get("MASTER_ADDR", "127.0.0.1"), int(env["MASTER_PORT"])


def rank_env(rank: int, world: int, port: int, parent_pid: int, *, addr: str = "127.0.0.1",
             local_rank: int | None = None, local_world: int | None = None) -> dict[str, str]:
    """The environment of a rank started by tunery's own rank 0, or by the worker of another node (what
    torchrun would set): the rendezvous store at addr:port, this rank's place in the run and on its node."""
    return child_env({"RANK": str(rank), "LOCAL_RANK": str(rank if local_rank is None else local_rank),
                      "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(local_world or world),
                      "MASTER_ADDR": addr, "MASTER_PORT": str(port), "TUNERY_PARENT_PID": str(parent_pid)})
