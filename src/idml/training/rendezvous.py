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
--max-restarts 1``: idml's restart failed in 5 of 6 tries, and so did a 10-line script that only
calls ``init_process_group("gloo")`` and ``all_reduce`` (3 of 4) -- see docs/cluster.md.

:func:`generation_store` gives each generation a store nothing older has written to: rank 0 starts
a TCPStore on a free port and publishes that port, with a random token it also writes into that
store, in the agent's store; the other ranks connect to the port they read there. A port read from
the previous generation belongs to a process that has exited (torchrun stops every worker before it
starts the next generation), so connecting to it is refused, and the rank reads the key again until
it finds the live one. The token guards against the one other case: the dead store's port taken
meanwhile by another store (this job's next one, or another job's), whose token differs.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta

import torch.distributed as dist

#: the agent-store key under which rank 0 publishes "<port> <token>" of its store (the agent's store is the job's)
PORT_KEY = "idml/generation_store_port"
#: the key of a generation's own store that holds its token
TOKEN_KEY = "idml/generation_token"
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
        token = uuid.uuid4().hex
        own.set(TOKEN_KEY, token)
        agent.set(PORT_KEY, f"{own.port} {token}")
        return own
    return _connect_to_published(agent, host, world_size, timeout)


def _connect_to_published(agent: dist.Store, host: str, world_size: int, timeout: timedelta) -> dist.Store:
    """A client of the store rank 0 published, read again while it names a dead or foreign one."""
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port, token = agent.get(PORT_KEY).decode().split()  # waits until some generation has published one
        store = _client_if_live(host, int(port), token, world_size)
        if store is not None:
            store.set_timeout(timeout)
            return store
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: no live store of this generation at {host} (last tried port {port})")
        time.sleep(0.1)


def _client_if_live(host: str, port: int, token: str, world_size: int) -> dist.Store | None:
    """A client of the store at ``port`` if it answers and holds ``token``; None otherwise."""
    try:
        store = dist.TCPStore(host, port, world_size, is_master=False,
                              timeout=timedelta(seconds=CONNECT_ATTEMPT_S))
        if store.check([TOKEN_KEY]) and store.get(TOKEN_KEY).decode() == token:
            return store
    except (RuntimeError, dist.DistError):  # refused: the previous generation's store is gone
        pass
    return None
