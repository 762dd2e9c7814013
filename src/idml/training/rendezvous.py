"""Joining a process group that torchrun restarted (``--max-restarts``): a fresh store for each generation.

Why a group of workers needs a store of its own: torchrun's agent hosts one TCPStore for the whole
job (``TORCHELASTIC_USE_AGENT_STORE=True``) and, in the PyTorch releases measured here (2.14), hands
the same address to every generation of workers it starts, with no prefix per generation.
``init_process_group`` writes each rank's Gloo address (``default_pg/0//cpu//0/<rank>``; NCCL's
unique id likewise) to that store and reads its peers'. After a restart the store still holds the
previous generation's entries, so a new rank that reads a peer's key before that peer has rewritten
it connects to a dead process: Gloo's ``connectFullMesh`` fails with "Connection refused", or the
ranks wait on each other in ``init_process_group`` until the timeout. Measured with two Gloo workers
on the CPU and ``kill -9`` of rank 1 under ``torchrun --standalone --nproc_per_node=2
--max-restarts 1``: idml's restart failed in 3 of 3 tries, and so did a 10-line script that only
calls ``init_process_group("gloo")`` and ``all_reduce`` (3 of 4) -- see docs/cluster.md.

:func:`generation_store` gives each generation a store nothing older has written to: rank 0 starts
a TCPStore on a free port and publishes that port in the agent's store; the other ranks connect to
the port they read there. A port read from the previous generation belongs to a process that has
exited (torchrun stops every worker before it starts the next generation), so connecting to it is
refused, and the rank reads the key again until it finds the live one.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import torch.distributed as dist

#: the agent-store key under which rank 0 publishes its store's port (the agent's store is the job's own)
PORT_KEY = "idml/generation_store_port"
#: how long one attempt to reach a published port may take before the key is read again
CONNECT_ATTEMPT_S = 2.0


def uses_agent_store() -> bool:
    """Whether torchrun's agent hosts the store that ``init_process_group`` would use."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def generation_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store | None:
    """A store for this generation of workers only, or None where ``init_process_group``'s own is fresh.

    Rank 0 hosts it; the others find it through the agent's store (see the module docstring)."""
    if not uses_agent_store():
        return None
    host = os.environ["MASTER_ADDR"]
    agent = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout)
    if rank == 0:
        own = dist.TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        agent.set(PORT_KEY, str(own.port))
        return own
    return _connect_to_published(agent, host, world_size, timeout)


def _connect_to_published(agent: dist.Store, host: str, world_size: int, timeout: timedelta) -> dist.Store:
    """A client of the store whose port rank 0 published, read again while it is a dead one's."""
    deadline = time.monotonic() + timeout.total_seconds()
    attempt = timedelta(seconds=CONNECT_ATTEMPT_S)
    while True:
        port = int(agent.get(PORT_KEY))  # waits until some generation has published one
        try:
            store = dist.TCPStore(host, port, world_size, is_master=False, timeout=attempt)
        except (RuntimeError, dist.DistError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        store.set_timeout(timeout)
        return store
