"""Run under ``mpiexec -n K`` by tests/test_mpi.py: the training jobs listed in a JSON file,
each with ``MPI.COMM_WORLD``. Every rank writes its final parameters to
``<out>/rank<r>.npz`` and, to ``<out>/rank<r>.json``, its loss history and the shape
``(sequences, padded length)`` of every shard it computed gradients for, so the test can
check that the ranks agree with each other and with one process, and on what data."""

import json
import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

from hypermixer.model import LanguageModel, ModelConfig
from hypermixer.train import Stage, TrainSettings, train

_original = LanguageModel.loss_and_gradients
shards = []
failure = {}


def observed(self, token_ids, targets, lengths=None):
    shards.append(list(np.shape(token_ids)))
    if failure and len(shards) > failure["after_calls"]:
        with open(failure["stamp"], "w") as f:   # when it failed, for the test's clock
            f.write(repr(time.time()))
        if "message" in failure:
            raise RuntimeError(failure["message"])
        os.kill(os.getpid(), signal.SIGKILL)
    return _original(self, token_ids, targets, lengths)


LanguageModel.loss_and_gradients = observed


def main(spec_path):
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    with open(spec_path) as f:
        jobs = json.load(f)
    for job in jobs:
        shards.clear()
        failure.clear()
        if job.get("fail", {}).get("rank") == rank:
            failure.update(job["fail"])
        with open(os.devnull, "w") as log:
            result = train(ModelConfig(**job["config"]) if "config" in job else None,
                           job["out"],
                           stages=[Stage(**s) for s in job["stages"]] if "stages" in job else None,
                           settings=TrainSettings(**job["settings"]), backend=job["backend"],
                           dtype=np.dtype(job["dtype"]), resume=job["resume"], log=log,
                           plot=False, comm=comm)
        np.savez(os.path.join(job["out"], f"rank{rank}.npz"),
                 **dict(result.network.named_parameters()))
        with open(os.path.join(job["out"], f"rank{rank}.json"), "w") as f:
            json.dump({"history": result.history, "shards": shards}, f)


if __name__ == "__main__":
    main(sys.argv[1])
