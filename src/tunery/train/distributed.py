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
    fsdp: bool = False
    """The model's weights are sharded over the ranks (shard_model): every forward and backward is a
    collective, so every rank runs as many as the busiest (micro_batches' padding)."""

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


def start(config, world: int, device: str) -> Group:
    """Start ranks 1..world-1 of a run of `config` and join them as rank 0."""
    import torch.distributed as dist

    from tunery.settings import rank_env

    port = _free_port()
    fd, path = tempfile.mkstemp(prefix="tunery-rank-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config.to_dict(), f)
    children = []
    try:
        # Rank 0 holds the rendezvous store and lets the group form only once every rank has said it is
        # ready (_ready): init_process_group would wait the whole timeout for a rank that died starting.
        store = dist.TCPStore("127.0.0.1", port, world, is_master=True, wait_for_workers=False,
                              timeout=COLLECTIVE_TIMEOUT)
        for rank in range(1, world):
            children.append(subprocess.Popen([sys.executable, "-m", "tunery.train.rank", path],
                                             env=rank_env(rank, world, port, os.getpid()),
                                             stdin=subprocess.DEVNULL))
        _wait_ready(store, children)
        return _join(0, world, device, store, children)
    except BaseException:
        for p in children:
            p.kill()
            p.wait()
        raise
    finally:
        Path(path).unlink(missing_ok=True)  # read by the ranks before they can join the group


READY_KEY = "tunery/ready/{rank}"


def _wait_ready(store, children: list) -> None:
    """Until every started rank has set its READY_KEY; a rank that exits first fails the run at once."""
    import signal
    import time

    keys = [READY_KEY.format(rank=r) for r in range(1, len(children) + 1)]
    deadline = time.monotonic() + COLLECTIVE_TIMEOUT.total_seconds()
    while not store.check(keys):
        for rank, p in enumerate(children, 1):
            code = p.poll()
            if code is not None:
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                raise RuntimeError(f"rank {rank} of the run {how} before joining it")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ranks did not join the run within {COLLECTIVE_TIMEOUT.total_seconds():.0f} s")
        time.sleep(0.05)


def join(device: str) -> Group:
    """Join the group a launcher started this process in (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    from tunery.settings import launched_rank

    me = launched_rank()
    if device == "cuda":
        device = f"cuda:{me.local_rank}"
    if not me.parent_pid:
        return _join(me.rank, me.world, device, "env://", [])
    import torch.distributed as dist

    from tunery.settings import rank_master

    host, port = rank_master()
    store = dist.TCPStore(host, port, me.world, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    store.set(READY_KEY.format(rank=me.rank), "1")  # started by our rank 0, which waits for this (start)
    return _join(me.rank, me.world, device, store, [])


def _join(rank: int, world: int, device: str, rendezvous, children: list) -> Group:
    """Form the group through an init_method URL or a TCPStore."""
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)
    how = {"init_method": rendezvous} if isinstance(rendezvous, str) else {"store": rendezvous}
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT, **how)
    return Group(rank=rank, world=world, device=device, children=children)
