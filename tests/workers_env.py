"""Starting local worker processes the way each framework's launcher describes them: torchrun's
variables (``env://``) for torch, ``TF_CONFIG`` for TensorFlow."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_envs(backend: str, count: int) -> list[dict[str, str]]:
    """The environment of each of ``count`` local workers, one thread each."""
    base = dict(os.environ, OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    for name in ("TF_CONFIG", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        base.pop(name, None)
    ports = free_ports(count)
    envs = []
    for rank in range(count):
        env = dict(base)
        if backend == "torch":
            env.update(
                RANK=str(rank),
                WORLD_SIZE=str(count),
                LOCAL_RANK=str(rank),
                MASTER_ADDR="localhost",
                MASTER_PORT=str(ports[0]),
            )
        else:
            hosts = [f"localhost:{port}" for port in ports]
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": rank}})
        envs.append(env)
    return envs


def start_workers(backend: str, args: list[str], count: int = 2, cwd: Path | None = None) -> list[subprocess.Popen]:
    """``count`` processes running ``python args`` as the workers of one group."""
    return [
        subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=cwd or ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in worker_envs(backend, count)
    ]


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    """Each worker's ``(exit status, stdout, stderr)``."""
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out, err))
    return results
