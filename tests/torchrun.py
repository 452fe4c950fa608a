"""`ldmkit` under torchrun for tests, with a watchdog: a run that hangs fails within its timeout
and shows where each of its processes was stuck (faulthandler's Python stacks of every thread),
instead of holding the suite for minutes and saying nothing."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def _process_tree(root: int) -> list[int]:
    """root and its descendants, from /proc (torchrun starts its workers in sessions of their own,
    so a process-group signal misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def signal_process_tree(root: int, sig: int) -> None:
    """`sig` to root and every process below it."""
    _signal_all(_process_tree(root), sig)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def torchrun(*args: str, processes: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run ... -m ldmkit ARGS`, one thread a process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "ldmkit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stuck = _process_tree(child.pid)
        _signal_all(stuck[1:], signal.SIGABRT)  # faulthandler prints each worker's stacks, then it ends
        try:
            out, err = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_all(stuck, signal.SIGKILL)
            out, err = child.communicate()
        pytest.fail(f"`ldmkit {' '.join(args)}` on {processes} processes hung for {timeout:.0f} s; "
                    f"its output ends:\n{out[-1500:]}\n"
                    f"and its stacks at the time:\n{err[err.find('Fatal Python error'):][:12000]}")
    return subprocess.CompletedProcess(command, child.returncode, out, err)
