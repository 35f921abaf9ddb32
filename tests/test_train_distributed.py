"""One run split over several processes on torch.distributed (gloo on this CPU): the same model as one
process, one writer, a clean stop; and the same trainer started by torchrun itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.test_train import Recorder, chat_rows, write_jsonl
from tunery.errors import InvalidRequest
from tunery.train import TrainConfig, train


def _run(tiny_model_dir, tmp_path, name, cb=None, **kw):
    cb = cb or Recorder()
    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_jsonl(data, chat_rows(10))
    valid = tmp_path / "valid.jsonl"
    if not valid.exists():
        write_jsonl(valid, chat_rows(5, start=100))
    cfg = dict(model=str(tiny_model_dir), training_file=data, validation_file=valid, output_dir=tmp_path / name,
               n_epochs=3, batch_size=4, seed=11, learning_rate_multiplier=5.0, early_stop=True, eval_every=2)
    cfg.update(kw)
    return train(TrainConfig(**cfg), cb), cb


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_two_processes_train_the_same_model_as_one(tiny_model_dir, tmp_path):
    one, cb1 = _run(tiny_model_dir, tmp_path, "one", processes=1)
    two, cb2 = _run(tiny_model_dir, tmp_path, "two", processes=2)
    assert one.status == two.status == "succeeded"
    assert any("Training in 2 processes" in m for _, m in cb2.events)
    assert not any("processes" in m for _, m in cb1.events)
    # Each rank trains half of every batch (10 examples, batch 4: the last batch of an epoch has 2, so a
    # rank with one example and a rank with one more); the summed gradient is the whole batch's.
    assert [m["step"] for m in cb2.metrics] == [m["step"] for m in cb1.metrics] == list(range(1, 10))
    for key in ("train_loss", "train_mean_token_accuracy", "trained_tokens"):
        assert [m[key] for m in cb2.metrics] == pytest.approx([m[key] for m in cb1.metrics], rel=1e-4), key
    # Evaluation passes are split too and summed: the same validation and early-stop check numbers.
    for key in ("valid_loss", "full_valid_loss", "original_accuracy"):
        a = [m[key] for m in cb1.metrics if key in m]
        b = [m[key] for m in cb2.metrics if key in m]
        assert a and b == pytest.approx(a, rel=1e-4), key
    w1, w2 = _adapter(one.model_dir), _adapter(two.model_dir)
    assert w1.keys() == w2.keys()
    for k in w1:
        assert (w1[k] - w2[k]).abs().max().item() < 1e-4, k
    # Rank 0 alone writes: one set of checkpoints, reported once.
    assert [c.step for c in cb2.checkpoints] == [3, 6, 9]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-3", "step-6", "step-9"]
    assert sum(m.startswith("Training finished") for _, m in cb2.events) == 1


def test_a_cancel_reaches_every_rank(tiny_model_dir, tmp_path):
    res, cb = _run(tiny_model_dir, tmp_path, "c", processes=2, cb=Recorder(stop_at={4: "cancel"}))
    assert res.status == "cancelled" and [m["step"] for m in cb.metrics] == [1, 2, 3, 4]
    assert not (tmp_path / "c" / "final").exists()


def test_processes_must_be_auto_or_a_positive_count(tmp_path):
    for bad in (0, -1, "2", True, 1.5):
        with pytest.raises(InvalidRequest) as e:
            TrainConfig(model="m", training_file="t", output_dir=tmp_path, processes=bad).validate()
        assert e.value.param == "processes"


def test_auto_keeps_short_runs_and_tiny_batches_in_one_process():
    from tunery.train.distributed import AUTO_MIN_SECONDS, auto_processes

    cores = len(os.sched_getaffinity(0))
    assert auto_processes("cpu", AUTO_MIN_SECONDS / 2, 8) == 1
    assert auto_processes("cpu", 10 * AUTO_MIN_SECONDS, 1) == 1
    assert auto_processes("cpu", 10 * AUTO_MIN_SECONDS, 8) == min(cores, 4)


def test_torchrun_launches_the_trainer_cli(tiny_model_dir, tmp_path):
    """`torchrun --nproc-per-node 2 $(which tunery) train ...`: the ranks find each other through torchrun's
    variables, rank 0 writes the model."""
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    tunery = os.path.join(os.path.dirname(sys.executable), "tunery")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", tunery,
           "train", "--model", str(tiny_model_dir), "--training-file", str(data), "--output", str(tmp_path / "o"),
           "--n-epochs", "2", "--batch-size", "4", "--seed", "3"]
    env = {**os.environ, "TUNERY_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "o" / "final" / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert "Traceback" not in out.stderr


def test_torchrun_over_two_nodes_joins_through_the_c10d_rendezvous(tiny_model_dir, tmp_path):
    """Two "machines" on loopback, by hand (outside the queue): one torchrun agent per node (--nnodes 2, one
    rank each, --rdzv-backend c10d); the ranks meet at the shared endpoint, global rank 0 alone writes."""
    from test_api_support import free_port

    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    tunery = os.path.join(os.path.dirname(sys.executable), "tunery")
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "TUNERY_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "job",
           tunery, "train", "--model", str(tiny_model_dir), "--training-file", str(data),
           "--output", str(tmp_path / "o"), "--n-epochs", "2", "--batch-size", "4", "--seed", "3"]
    agents = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               stdin=subprocess.DEVNULL) for _ in range(2)]
    outs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert all("succeeded: " in out for out in outs)  # each node's rank trained the run to its end
    assert sum("Training finished" in out for out in outs) == 1  # only rank 0 reports
    assert sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert (tmp_path / "o" / "final" / "adapter_model.safetensors").exists()


def test_tunery_train_in_two_processes_keeps_the_terminal_quiet(tiny_model_dir, tmp_path):
    """`tunery train` starts the second rank itself; its output is the user's terminal too."""
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    tunery = os.path.join(os.path.dirname(sys.executable), "tunery")
    cmd = [tunery, "train", "--model", str(tiny_model_dir), "--training-file", str(data), "--output",
           str(tmp_path / "o"), "--n-epochs", "1", "--batch-size", "4", "--seed", "3"]
    env = {**os.environ, "TUNERY_TRAIN_PROCESSES": "2"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Training in 2 processes" in out.stderr
    assert "Warning" not in out.stderr and "warn(" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def _my_ranks() -> list[int]:
    """pids of the ranks this (test) process started."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if int(stat[1]) == os.getpid() and b"tunery.train.rank" in cmd:
                pids.append(int(d))
    return pids


def test_a_rank_that_dies_fails_the_run_and_leaves_no_rank_behind(tiny_model_dir, tmp_path):
    import signal
    import time

    class KillRank1(Recorder):
        def on_metrics(self, data):
            super().on_metrics(data)
            if data["step"] == 2:
                for pid in _my_ranks():
                    os.kill(pid, signal.SIGKILL)

    t0 = time.monotonic()
    with pytest.raises(Exception) as e:
        _run(tiny_model_dir, tmp_path, "k", processes=2, cb=KillRank1())
    assert time.monotonic() - t0 < 60  # the peer's loss is noticed at the next collective, not after a timeout
    assert "Connection closed" in str(e.value) or "peer" in str(e.value).lower(), e.value
    assert _my_ranks() == []
    assert not (tmp_path / "k" / "final").exists()


def test_a_rank_that_dies_before_joining_fails_the_run_at_once(tiny_model_dir, tmp_path):
    """A rank lost while it starts (an import error, the OOM killer while it loads the model) must not leave
    rank 0 waiting for it until the rendezvous times out."""
    import signal
    import threading
    import time

    def kill_the_rank_as_it_starts():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for pid in _my_ranks():
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_rank_as_it_starts, daemon=True)
    killer.start()
    t0 = time.monotonic()
    with pytest.raises(Exception) as e:
        _run(tiny_model_dir, tmp_path, "s", processes=2)
    assert time.monotonic() - t0 < 60, "rank 0 waited for a dead rank"
    assert "rank 1" in str(e.value) and "SIGKILL" in str(e.value), e.value
    assert _my_ranks() == []


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_full_fine_tuning_in_two_processes_is_fsdp_and_trains_the_one_process_model(tiny_model_dir, tmp_path):
    """method=full over 2 ranks shards the weights (FSDP FULL_SHARD). Batches of 3 and one example per
    micro-batch give the ranks unequal passes (2 against 1, and 1 against none in an epoch's last batch),
    which they must pad; resume state crosses between sharded and one-process runs."""
    kw = dict(method="full", batch_size=3, max_tokens_per_micro_batch=32, learning_rate_multiplier=10.0)
    one, cb1 = _run(tiny_model_dir, tmp_path, "one", processes=1, **kw)
    two, cb2 = _run(tiny_model_dir, tmp_path, "two", processes=2, **kw)
    assert one.status == two.status == "succeeded"
    assert any("FSDP (FULL_SHARD) over 2 processes" in m for _, m in cb2.events)
    assert [m["step"] for m in cb2.metrics] == [m["step"] for m in cb1.metrics] == list(range(1, 13))
    assert cb2.losses() == pytest.approx(cb1.losses(), abs=1e-4)
    assert cb1.losses()[-1] < cb1.losses()[0] - 0.05  # it trains
    for key in ("valid_loss", "full_valid_loss", "original_accuracy"):
        a = [m[key] for m in cb1.metrics if key in m]
        assert a and [m[key] for m in cb2.metrics if key in m] == pytest.approx(a, abs=1e-4), key
    w1, w2 = _weights(one.model_dir), _weights(two.model_dir)
    assert w1.keys() == w2.keys()
    for k in w1:
        assert (w1[k] - w2[k]).abs().max().item() < 1e-4, k
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-12", "step-4", "step-8"]

    # Resume state crosses between the two: a sharded run's pause resumes in one process, and one process's
    # checkpoint in two ranks (the optimizer state is keyed by name when sharded, by index otherwise).
    paused, cb_p = _run(tiny_model_dir, tmp_path, "p", processes=2, cb=Recorder(stop_at={6: "pause"}), **kw)
    assert paused.status == "paused"
    resumed, cb_r = _run(tiny_model_dir, tmp_path, "p", processes=1, resume_from=paused.resume_dir, **kw)
    assert resumed.status == "succeeded"
    assert cb_p.losses() + cb_r.losses() == pytest.approx(cb1.losses(), abs=1e-4)
    later, cb_l = _run(tiny_model_dir, tmp_path, "l", processes=2, resume_from=tmp_path / "one" / "checkpoints" /
                       "step-4", **kw)
    assert later.status == "succeeded" and any("FSDP" in m for _, m in cb_l.events)
    assert cb_l.losses() == pytest.approx(cb1.losses()[4:], abs=1e-4)
