"""A real Slurm cluster on this machine, for the Slurm backend's tests.

Debian's `slurm-wlm` and `munge`: one munged with its own key and socket, one slurmctld and two slurmd
"nodes" (`slurmd -N n1`, `-N n2`: the same host, different ports), all in the foreground as this test
process's children, configured under a temporary folder and stopped at the end. Only loopback ports.
Nothing stands in for sbatch, squeue, scancel or the daemons.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from app.worker.backends.local import die_with_parent

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
NODES = ("n1", "n2")
START_TIMEOUT_S = 60.0


def missing_binaries() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def slurm_conf(root: Path, user: str, host: str, ports: list[int], cpus: int) -> str:
    ctld_port, slurmd_port, *node_ports = ports
    nodes = "\n".join(
        f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={host} Port={port} CPUs={cpus} State=UNKNOWN"
        for name, port in zip(NODES, node_ports, strict=True)
    )
    return f"""\
ClusterName=redlinetest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """Start with `start()`, stop with `stop()`; `env` holds SLURM_CONF for the client commands."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, argv: list[str], log_name: str) -> None:
        # The daemons die with the test process even when it is killed (no cluster outlives its run).
        parent = os.getpid()
        with (self.root / "log" / log_name).open("ab") as log:
            self.procs.append(subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=lambda: die_with_parent(parent),
            ))

    def start(self) -> None:
        for sub in ("munge", "state", "log", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        munge = self.root / "munge"
        self._start(
            [
                _binary("munged"), "--foreground", "--force", f"--socket={munge}/munge.socket",
                f"--key-file={key}", f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed",
                f"--log-file={munge}/munged.log",
            ],
            "munged.out",
        )  # fmt: skip
        self._wait(lambda: (munge / "munge.socket").exists(), "munged's socket")
        host = socket.gethostname().split(".")[0]
        cpus = max(2, os.cpu_count() or 2)
        self.conf.write_text(slurm_conf(self.root, getpass.getuser(), host, _free_ports(2 + len(NODES)), cpus))
        self._start([_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        for name in NODES:
            self._start([_binary("slurmd"), "-D", "-N", name, "-f", str(self.conf)], f"slurmd-{name}.out")
        self._wait(self._nodes_idle, "both slurmd nodes to be idle")

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=30, check=False)

    def _nodes_idle(self) -> bool:
        done = self.run("sinfo", "-h", "-N", "-o", "%N %t")
        states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
        return done.returncode == 0 and all(states.get(name) == "idle" for name in NODES)

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in (self.root / "log").glob("*"))
                self.stop()
                why = f"exited: {', '.join(dead)}" if dead else "timeout"
                raise RuntimeError(f"Slurm test cluster: no {what} ({why})\n{logs}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons (slurmd last but one, munged last)."""
        if self.conf.exists():
            self.run("scancel", "--user", getpass.getuser())
            deadline = time.monotonic() + 20
            while self.run("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
