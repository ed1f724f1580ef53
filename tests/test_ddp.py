"""Training on several processes: 2-process DDP on CPU (gloo) gives the weights of 1 process with twice the batch,
and the accelerate configs the README points to for GPU clusters are valid."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
ARGS = ["--epochs", "2", "--no-finetune", "--num-workers", "0", "--warmup-epochs", "0", "--balance", "none"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(data: Path, out: Path, batch: int, processes: int) -> str:
    train = ["-m", "aigi.cli", "train", "cnnspot", "--data", str(data), "--out", str(out), "--batch-size", str(batch)]
    if processes == 1:
        cmd = [sys.executable, *train, *ARGS]
    else:  # torchrun + ACCELERATE_USE_CPU: accelerate's multi-CPU DDP, gloo backend
        port = str(_free_port())
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", port]
        cmd += [*train, *ARGS]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "AIGI_NO_PROGRESS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout + done.stderr


def test_two_cpu_processes_train_the_weights_of_one_with_twice_the_batch(labelled_images, tmp_path):
    _train(labelled_images, tmp_path / "one", batch=4, processes=1)
    said = _train(labelled_images, tmp_path / "two", batch=2, processes=2)
    assert said.count(f"saved {tmp_path / 'two'}") == 1  # only the process that wrote the folder says so
    one, two = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        assert (one[name].float() - two[name].float()).abs().max() < 1e-6, name
    logs = [
        [json.loads(line) for line in (tmp_path / n / "train_log.jsonl").read_text().splitlines()]
        for n in ("one", "two")
    ]
    assert [r["lr"] for r in logs[0]] == [r["lr"] for r in logs[1]]  # the same schedule: each process took half


@pytest.mark.parametrize("name", ["one_node_gpus.yaml", "multi_node_gpus.yaml"])
def test_the_cluster_configs_are_accelerate_configs(name):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(REPO / "configs" / "accelerate" / name)
    assert config.distributed_type.value == "MULTI_GPU" and config.num_processes >= 4
