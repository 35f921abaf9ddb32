"""Data parallelism on torch.distributed: one run split over several processes (ranks).

Every rank builds the same model from the same seed, walks the same schedule and sees the same batches;
each trains on its slice of every batch (batch[rank::world]), the gradients are summed with an
all-reduce before the optimizer step, so every rank takes the same step and the weights never drift
apart. Losses are scaled by the whole batch's trained-token count, which makes the summed gradient exactly
the single-process one. Evaluation passes are split the same way and their sums all-reduced, so every
rank takes the same early-stop and repair decisions. Rank 0 alone reports (callbacks) and writes files.

Two ways in, as torch users expect:

- under `torchrun` (or any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): train()
  joins the group it was started in;
- from one process (the worker's training child, `tunery train`): train() decides how many processes
  the run gets (TrainConfig.processes; auto: see auto_processes) and starts the other ranks itself, as
  `python -m tunery.train.rank CONFIG.json` with the same variables torchrun sets.

- over several machines (TrainConfig.nnodes, from `tunery worker --nnodes N --node-rank K --rdzv-endpoint
  HOST:PORT`): rank 0, in the training child of node 0's worker (the one that claimed the job and holds its
  lease), hosts the rendezvous store at HOST:PORT for the run's lifetime and posts the run there (RUN_KEY);
  the worker of node K (tunery.worker.node) sees it, starts global ranks K*procs .. K*procs+procs-1 with the
  variables torchrun sets, and they join the same group. Rank 0 still alone reports and writes files (to
  the shared TUNERY_HOME), so a lost node is a failed attempt that the retry resumes from its checkpoint.

On CPUs the backend is gloo, each rank with its own cores; on CUDA it is NCCL, one GPU per rank.
LoRA runs replicate the (small) trainable weights on every rank, as DDP does; full fine-tuning shards the
model over the ranks with FSDP (Group.shard_model), the same step computed from slices of the weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

COLLECTIVE_TIMEOUT = timedelta(seconds=300)
"""How long a rank waits for the others at any collective (a crashed rank ends the run after this)."""

AUTO_MIN_SECONDS = 40.0
"""auto_processes: a run estimated shorter than this (in one process) stays in one process; starting
another costs a few seconds (imports, model load, tokenizing) before it helps."""
AUTO_MAX_CPU_PROCESSES = 4
"""auto_processes on CPU: one process per core up to this many. Batches of small fact sets hold 2-8
examples, so more ranks than that would wait idle at every step."""


@dataclass
class Group:
    """This process's place in a multi-process run."""

    rank: int
    world: int
    device: str
    children: list  # Popen of the ranks this process started (rank 0 of a self-launched run)
    local_world: int = 0
    """The ranks on this machine (the whole world when 0)."""
    fsdp: bool = False
    """The model's weights are sharded over the ranks (shard_model): every forward and backward is a
    collective, so every rank runs as many as the busiest (micro_batches' padding)."""

    def __post_init__(self):
        self.local_world = self.local_world or self.world

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        return items[self.rank::self.world]

    def micro_batches(self, items: list, split) -> tuple[list, int]:
        """(this rank's micro-batches of its shard, how many empty passes it adds): with FSDP every rank
        runs as many forward/backward passes as the rank with the most micro-batches (each pass gathers the
        weights from all ranks), so the others pad with passes that count for nothing."""
        mine = split(self.shard(items))
        if not self.fsdp:
            return mine, 0
        most = max(len(split(items[r::self.world])) for r in range(self.world))
        return mine, most - len(mine)

    def shard_model(self, model) -> None:
        """FSDP (FULL_SHARD, torch's fully_shard): every transformer block, then the whole model, holds
        1/world of its weights, gradients and optimizer state; gradients are summed (not averaged) over the
        ranks, as sync_gradients does for replicated weights. Call before creating the optimizer."""
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or ())
        units = [m for m in model.modules() if type(m).__name__ in blocks] + [model]
        for unit in units:
            fully_shard(unit)
        for unit in units:  # each unit reduces its own gradients: set every one
            # Sums only (gloo has no pre-multiplied sum), no division: the loss is already scaled by the whole
            # batch's token count. (Averaged, Adam's steps would barely change, but its saved state would not
            # be the one-process run's.)
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
        self.fsdp = True

    def full_model_state(self, model) -> dict:
        """The whole model's weights on CPU, on every rank (a collective when sharded)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # A tied weight (the embedding as output head) comes back under each of its names, as separate
        # copies: keep the one name the model lists, as save_pretrained does for an unsharded model.
        listed = {n for n, _ in model.named_parameters()}
        tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - listed
        return {k: v for k, v in state.items() if k not in tied}

    def full_optimizer_state(self, model, opt) -> dict:
        """The optimizer's whole state keyed by parameter name (a collective when sharded)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))

    def load_optimizer_state(self, model, opt, state: dict) -> None:
        """Load a whole optimizer state (keyed by parameter name) into this rank's shard of it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def gather_flags(self, mine: list[bool], n: int) -> list[bool]:
        """The flags of all n items, each rank holding those of shard(range(n)), in item order."""
        import torch
        import torch.distributed as dist

        t = torch.zeros(n, dtype=torch.int32, device=self._comm_device)
        for i, flag in zip(range(self.rank, n, self.world), mine):
            t[i] = 2 if flag else 1
        dist.all_reduce(t)
        return [v == 2 for v in t.tolist()]

    def sync_gradients(self, params: list) -> None:
        """Sum every trainable parameter's gradient over the ranks (one flat all-reduce); FSDP's backward
        has already summed each shard's."""
        import torch
        import torch.distributed as dist

        if self.fsdp:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p)
            offset += n

    def agree(self, value):
        """Rank 0's value of a small picklable object, on every rank (e.g. a stop request)."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @property
    def _comm_device(self) -> str:
        return self.device if self.device.startswith("cuda") else "cpu"

    def close(self, ok: bool = True) -> None:
        """Leave the group; rank 0 waits for the ranks it started (or stops them when the run failed)."""
        import torch.distributed as dist

        if dist.is_initialized():
            if ok:
                try:
                    dist.barrier()
                except RuntimeError:
                    ok = False
            dist.destroy_process_group()
        for p in self.children:
            if not ok and p.poll() is None:
                p.kill()
            p.wait()


def launched_world() -> int:
    """The number of ranks when a launcher (torchrun, or our own rank 0) started this process, else 0."""
    from tunery.settings import launched_rank

    launched = launched_rank()
    return launched.world if launched else 0


def auto_processes(device: str, estimated_seconds: float, batch_size: int) -> int:
    """How many ranks a run gets when TrainConfig.processes is "auto".

    CUDA: one per visible GPU. CPU: one per core this process may use (each rank then runs one thread,
    which on a small model trains nearly twice as fast on two cores as one process with two threads:
    a 135M model's step is bound by per-operation overhead that threads do not split), at most the batch
    size and AUTO_MAX_CPU_PROCESSES, and only for runs long enough to repay starting them."""
    import torch

    if device.startswith("cuda"):
        return max(1, torch.cuda.device_count()) if device == "cuda" else 1
    if not device.startswith("cpu") or estimated_seconds < AUTO_MIN_SECONDS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, batch_size, AUTO_MAX_CPU_PROCESSES))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_processes(device: str) -> int:
    """The ranks per node of a multi-node run whose processes are "auto": one per visible GPU, 1 on CPU (a
    machine's cores are better spent in one rank than in ranks that wait on the network at every step)."""
    import torch

    if device == "cuda":
        return max(1, torch.cuda.device_count())
    return 1


def start(config, world: int, device: str) -> Group:
    """Start this node's ranks 1..(world / nnodes)-1 of a run of `config` and join them as rank 0.

    Rank 0 holds the rendezvous store (a TCPStore: on loopback, or with config.nnodes above 1 at
    config.rdzv_endpoint, where the workers of the other nodes find the run: see RUN_KEY) and lets the group
    form only once every rank has said it is ready (_wait_ready): init_process_group would wait the whole
    timeout for a rank that died starting. The store lives as long as this process: a run whose rank 0 is
    gone leaves nothing behind for a node to join."""
    from tunery.settings import parse_endpoint, rank_env

    nnodes = max(1, int(getattr(config, "nnodes", 1) or 1))
    per_node = world // nnodes
    if nnodes > 1:
        addr, port = parse_endpoint(config.rdzv_endpoint)
    else:
        addr, port = "127.0.0.1", _free_port()
    fd, path = tempfile.mkstemp(prefix="tunery-rank-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config.to_dict(), f)
    children = []
    try:
        store = _host_store(port, world, nnodes > 1)
        for rank in range(1, per_node):
            children.append(subprocess.Popen([sys.executable, "-m", "tunery.train.rank", path],
                                             env=rank_env(rank, world, port, os.getpid(), addr=addr,
                                                          local_world=per_node),
                                             stdin=subprocess.DEVNULL))
        if nnodes > 1:
            store.set(RUN_KEY, json.dumps({"id": uuid.uuid4().hex, "world": world, "nnodes": nnodes,
                                           "procs": per_node, "config": config.to_dict()}))
        _wait_ready(store, children, world, config.rdzv_endpoint if nnodes > 1 else None)
        if nnodes > 1:
            store.delete_key(RUN_KEY)  # formed: a node that connects from now on waits for the next run
        return _join(0, world, device, store, children, per_node)
    except BaseException:
        for p in children:
            p.kill()
            p.wait()
        raise
    finally:
        Path(path).unlink(missing_ok=True)  # read by the ranks before they can join the group


READY_KEY = "tunery/ready/{rank}"
RUN_KEY = "tunery/run"
"""Set by rank 0 of a multi-node run in its store until every rank is ready: JSON {id, world, nnodes, procs,
config (TrainConfig.to_dict())}. The worker of node K starts global ranks K*procs .. K*procs+procs-1 of it."""
NODE_KEY = "tunery/node/{node}"
"""Counted up by each worker that takes node K's place in the run: the first one joins, any other (started
with the same --node-rank by mistake) stays out instead of doubling node K's ranks."""
FAILED_KEY = "tunery/failed"
"""Set by the worker of another node when one of its ranks exits with an error: what happened."""
HOST_RETRY_SECONDS = 10.0
"""How long rank 0 retries binding the rendezvous port (the previous attempt's store may still be closing)."""


def _host_store(port: int, world: int, shared: bool):
    import time

    import torch.distributed as dist

    deadline = time.monotonic() + (HOST_RETRY_SECONDS if shared else 0)
    while True:
        try:
            # The server listens on every interface; the host is where this process itself connects.
            return dist.TCPStore("127.0.0.1", port, world, is_master=True,
                                 wait_for_workers=False, timeout=COLLECTIVE_TIMEOUT)
        except (RuntimeError, OSError) as exc:  # DistNetworkError is a RuntimeError
            if time.monotonic() > deadline:
                if not shared:
                    raise
                raise RuntimeError(f"cannot listen on the rendezvous port {port} "
                                   f"(TUNERY_WORKER_RDZV_ENDPOINT): {str(exc).splitlines()[0]}") from None
            time.sleep(0.5)


def _wait_ready(store, children: list, world: int, endpoint: str | None = None) -> None:
    """Until every rank has set its READY_KEY; a rank of this node that exits first, or one another node's
    worker reports (FAILED_KEY), fails the run at once; other nodes that never come fail it after the
    timeout, naming them."""
    import signal
    import time

    keys = [READY_KEY.format(rank=r) for r in range(1, world)]
    deadline = time.monotonic() + COLLECTIVE_TIMEOUT.total_seconds()
    while not store.check(keys):
        for rank, p in enumerate(children, 1):
            code = p.poll()
            if code is not None:
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                raise RuntimeError(f"rank {rank} of the run {how} before joining it")
        if endpoint and store.check([FAILED_KEY]):
            said = store.get(FAILED_KEY).decode(errors="replace")
            raise RuntimeError(f"another node's worker reported: {said}")
        if time.monotonic() > deadline:
            limit = f"{COLLECTIVE_TIMEOUT.total_seconds():.0f} s"
            if not endpoint:
                raise RuntimeError(f"the ranks did not join the run within {limit}")
            per_node = len(children) + 1
            missing = sorted({r // per_node for r in range(1, world)
                              if not store.check([READY_KEY.format(rank=r)])})
            raise RuntimeError(f"node(s) {', '.join(map(str, missing))} did not join the run at {endpoint} "
                               f"within {limit}: start `tunery worker --nnodes {world // per_node} "
                               f"--node-rank K --rdzv-endpoint {endpoint}` there")
        time.sleep(0.05)


def join(device: str) -> Group:
    """Join the group a launcher started this process in (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    from tunery.settings import launched_rank

    me = launched_rank()
    if device == "cuda":
        device = f"cuda:{me.local_rank}"
    if not me.parent_pid:
        return _join(me.rank, me.world, device, "env://", [], me.local_world)
    import torch.distributed as dist

    from tunery.settings import rank_master

    host, port = rank_master()
    store = dist.TCPStore(host, port, me.world, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    store.set(READY_KEY.format(rank=me.rank), "1")  # started by our rank 0, which waits for this (start)
    return _join(me.rank, me.world, device, store, [], me.local_world)


def _join(rank: int, world: int, device: str, rendezvous, children: list, local_world: int = 0) -> Group:
    """Form the group through an init_method URL or a TCPStore."""
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)
    how = {"init_method": rendezvous} if isinstance(rendezvous, str) else {"store": rendezvous}
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT, **how)
    return Group(rank=rank, world=world, device=device, children=children, local_world=local_world)
