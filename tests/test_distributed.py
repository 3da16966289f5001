"""distributed.py: which process group the environment describes, and the collectives on two CPU processes."""

import os
import socket

import pytest
import torch

import distributed
import utils


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, None),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1"}, (3, 4, 1)),
        ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, None),  # srun with one task: a plain process
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None),  # a batch script running python itself, not srun
        ({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NNODES": "1"}, (5, 8, 1)),
    ],
)
def test_the_process_group_comes_from_torchrun_or_slurm_variables(environ, expected):
    environ = dict(environ)
    assert distributed.distributed_env(environ) == expected
    if expected and "SLURM_PROCID" in environ:
        assert (environ["MASTER_ADDR"], environ["MASTER_PORT"]) == ("127.0.0.1", "29500")


def test_slurm_on_several_nodes_needs_master_addr():
    with pytest.raises(utils.UserError, match="export MASTER_ADDR"):
        distributed.distributed_env({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NNODES": "2"})


def _collectives(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    device = distributed.init_distributed("cpu")
    losses = distributed.mean_over_ranks({"a": torch.tensor(float(rank)), "b": torch.tensor(10.0 * rank)})
    gathered = distributed.all_gather_object({"rank": rank})
    shared = distributed.broadcast_object(f"from {rank}")
    results[rank] = (device.type, losses, gathered, shared, distributed.get_world_size())
    distributed.cleanup_distributed()


@pytest.mark.slow
def test_collectives_on_two_cpu_processes():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_collectives, args=(2, port, results), nprocs=2)
    for rank in (0, 1):
        device, losses, gathered, shared, world_size = results[rank]
        assert device == "cpu" and world_size == 2
        assert losses == {"a": 0.5, "b": 5.0}  # the mean over ranks, as the logs show it
        assert gathered == [{"rank": 0}, {"rank": 1}] and shared == "from 0"
