"""`ldmkit` under torchrun for tests, with a watchdog: a run that hangs fails within its timeout
and shows where each of its processes was stuck (faulthandler's Python stacks of every thread),
instead of holding the suite for minutes and saying nothing."""

import os
import signal
import subprocess
import sys

import pytest


def torchrun(*args: str, processes: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run ... -m ldmkit.cli ARGS`, one thread a process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "ldmkit.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    # its own session: the launcher and its workers form one process group to signal
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGABRT)  # faulthandler prints each process's stacks, then it ends
        try:
            out, err = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            out, err = child.communicate()
        pytest.fail(f"`ldmkit {' '.join(args)}` on {processes} processes hung for {timeout:.0f} s; "
                    f"its output ends:\n{out[-1500:]}\nand its stacks at the time:\n{err[-8000:]}")
    return subprocess.CompletedProcess(command, child.returncode, out, err)
