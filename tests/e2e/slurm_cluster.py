"""A real SLURM cluster on this machine for the end-to-end tests: one slurmctld and two slurmd.

The daemons run with a private slurm.conf in a temporary directory that holds every state, spool, log
and pid file, on free ports, so several clusters (several test runs) can live side by side. The two
nodes, ``n1`` and ``n2``, are the same machine: ``NodeHostname=localhost NodeAddr=127.0.0.1`` with
their own slurmd port. Their names do not resolve as host names, so a job that needs an address for a
node (``MASTER_ADDR``) must fall back to 127.0.0.1.

    cluster = SlurmCluster.start()           # idle nodes, or SlurmError with the daemons' logs
    job = cluster.submit("slurm/x.sh", "arg", options=["-N2"])   # waits; job.returncode, job.output()
    cluster.stop()                            # scancel, wait for an empty queue, stop daemons by pid

Every SLURM command needs ``SLURM_CONF``: pass ``env=cluster.env()`` to subprocess (``cluster.run``
does). See slurm/README.md for the whole story.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NODES = ("n1", "n2")
CPUS_PER_NODE = 2
CLIENTS = ("sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel")
DAEMONS = ("slurmctld", "slurmd")
# Job states after which nothing more happens to a job (a requeued job goes back to PENDING instead).
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                          "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"})
# Reasons a pending job gives when it can never start on this cluster (asks for more than the nodes have).
HOPELESS_REASONS = frozenset({"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
                              "DependencyNeverSatisfied"})
_INHERITED_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SINFO_", "SCANCEL_")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class SlurmError(RuntimeError):
    """A cluster or job problem; the message carries what is needed to debug it (states, logs)."""


def find_binaries() -> tuple[dict[str, str], list[str]]:
    """(name -> path of each SLURM binary found, names missing); daemons are also looked for in sbin."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    found, missing = {}, []
    for name in CLIENTS + DAEMONS:
        path = shutil.which(name, path=search)
        if path:
            found[name] = path
        else:
            missing.append(name)
    return found, missing


def unavailable_reason() -> str | None:
    """Why a cluster cannot start here (missing binaries), or None."""
    _, missing = find_binaries()
    if missing:
        return (f"SLURM binaries not found: {', '.join(missing)} (install with: apt-get install -y "
                "--no-install-recommends slurmctld slurmd slurm-client munge)")
    return None


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """preexec_fn: the daemon gets SIGTERM when the test process dies, so a killed run leaks nothing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for(predicate, timeout: float = 60, what: str = "a condition", poll: float = 0.1):
    """Poll ``predicate()`` until it returns something true (returned); TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(poll)


def parse_record(line: str) -> dict[str, str]:
    """One line of ``scontrol show job -o`` (``Key=Value Key=Value ...``) as a dict."""
    keys = list(re.finditer(r"(?:(?<=\s)|^)([A-Za-z][A-Za-z0-9_/:]*)=", line))
    return {m.group(1): line[m.end():(keys[i + 1].start() if i + 1 < len(keys) else len(line))].strip()
            for i, m in enumerate(keys)}


def returncode_of(record: dict[str, str]) -> int:
    """A job record's ``ExitCode=code:signal`` as a shell would report it (128 + signal when signalled)."""
    code, _, sig = record.get("ExitCode", "0:0").partition(":")
    return 128 + int(sig) if sig and int(sig) else int(code)


@dataclass
class SlurmJob:
    """A submitted job (or job array). ``returncode`` is set once waited for: the job's exit code, the
    highest over an array's tasks, 128 + N for a job killed by signal N (what ``sbatch --wait`` returns)."""

    cluster: SlurmCluster
    job_id: str
    records: list[dict[str, str]] = field(default_factory=list)
    returncode: int | None = None

    @property
    def states(self) -> list[str]:
        return [r.get("JobState", "?") for r in self.records]

    def wait(self, timeout: float = 120) -> SlurmJob:
        self.records = self.cluster.wait(self.job_id, timeout=timeout)
        self.returncode = max(returncode_of(r) for r in self.records)
        return self

    def output_paths(self) -> list[Path]:
        """The StdOut file of the job, or of each array task in task order."""
        records = self.records or self.cluster.records(self.job_id)
        return [Path(r["StdOut"]) for r in sorted(records, key=_task_order) if r.get("StdOut")]

    def output(self) -> str:
        """The job's output (stdout and stderr unless the job split them); array tasks concatenated."""
        return "".join(p.read_text(errors="replace") for p in self.output_paths() if p.exists())


def _task_order(record: dict[str, str]) -> int:
    task = record.get("ArrayTaskId", "")
    return int(task) if task.isdigit() else -1


class SlurmCluster:
    """A running cluster; make one with :meth:`start`. Nodes: ``NODES``, ``CPUS_PER_NODE`` CPUs each."""

    def __init__(self, root: Path, binaries: dict[str, str]):
        self.root = root
        self.conf = root / "slurm.conf"
        self.jobs_dir = root / "jobs"
        self.nodes = NODES
        self.bin = binaries
        self._procs: dict[str, subprocess.Popen] = {}
        self._stopped = False

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def start(cls, root: str | os.PathLike | None = None, timeout: float = 60) -> SlurmCluster:
        """Write the configuration, start the daemons and wait until both nodes are idle."""
        binaries, missing = find_binaries()
        if missing:
            raise SlurmError(unavailable_reason())
        root = Path(root) if root else Path(tempfile.mkdtemp(prefix="onepeace-slurm-"))
        cluster = cls(root, binaries)
        try:
            cluster._write_conf()
            cluster._start_daemons()
            cluster.wait_nodes_idle(timeout)
        except BaseException:
            cluster.stop(remove=False)
            raise
        atexit.register(cluster.stop)
        return cluster

    def _write_conf(self) -> None:
        for sub in ("state", "log", "run", "jobs", *(f"spool/{n}" for n in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        r = self.root
        lines = [
            "ClusterName=onepeace-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            # No munge: nothing leaves this machine. cred_expire=10 cuts a requeued job's hold from ~120 s to ~15 s.
            "AuthType=auth/none",
            "CredType=cred/none",
            "AuthInfo=cred_expire=10",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd-%n.log",
            # A permanent record of finished jobs (state, exit code), since there is no accounting database.
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={r}/log/jobcomp.txt",
            "ProctrackType=proctrack/pgid",  # proctrack/linuxproc leaks orphaned children
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SchedulerParameters=bf_interval=1,sched_interval=2",
            # Emulated nodes are accepted whatever the real CPU count and memory are.
            "SlurmdParameters=config_overrides",
            "MinJobAge=300",  # finished jobs stay visible to `scontrol show job` for 5 minutes
            "KillWait=5",
            "SlurmdTimeout=30",
            *(f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={p} CPUs={CPUS_PER_NODE} "
              "RealMemory=2000 State=UNKNOWN" for n, p in zip(self.nodes, node_ports)),
            f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_daemons(self) -> None:
        self._spawn("slurmctld", [self.bin["slurmctld"], "-D", "-f", str(self.conf)])
        for node in self.nodes:
            self._spawn(f"slurmd-{node}", [self.bin["slurmd"], "-D", "-N", node, "-f", str(self.conf)])

    def _spawn(self, name: str, argv: list[str]) -> None:
        # In the foreground (-D) as our children, so we reap them and they die with us; they still write
        # their pid files, which is what stop() goes by.
        with open(self.root / "log" / f"{name}.console", "wb") as console:
            self._procs[name] = subprocess.Popen(argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=console,
                                                 stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 15
        while not (self.root / "run" / f"{name}.pid").exists():
            if self._procs[name].poll() is not None or time.monotonic() > deadline:
                raise SlurmError(f"{name} did not start (exit status {self._procs[name].poll()})\n{self.logs()}")
            time.sleep(0.05)

    def wait_nodes_idle(self, timeout: float = 60) -> None:
        """Until every node is idle; SlurmError with the node states and the daemons' logs otherwise."""
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{name} exited with status {proc.returncode}\n{self.logs()}")
            res = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
            states = res.stdout.strip()
            seen = dict(line.split() for line in states.splitlines() if len(line.split()) == 2)
            if all(seen.get(n) == "idle" for n in self.nodes):
                return
            time.sleep(0.2)
        raise SlurmError(f"SLURM nodes not idle after {timeout:.0f} s; sinfo says:\n{states}\n{self.logs()}")

    def stop(self, remove: bool = True) -> None:
        """Cancel all jobs, wait for an empty queue, stop the daemons by the pids in their pid files and
        remove the directory (kept when ONEPEACE_KEEP_SLURM=1). Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
                try:
                    self.cancel_all(timeout=60)
                except SlurmError as e:
                    print(f"warning: {e}")
        finally:
            self._stop_daemons()
            if remove and os.environ.get("ONEPEACE_KEEP_SLURM") != "1":
                shutil.rmtree(self.root, ignore_errors=True)

    def _stop_daemons(self) -> None:
        pids = {}
        for name in [n for n in self._procs if n != "slurmctld"] + ["slurmctld"]:
            pid_file = self.root / "run" / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            # Only a process started with our slurm.conf, never a stranger that reused the pid.
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(self.conf).encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
                pids[name] = pid
        deadline = time.monotonic() + 15
        for name, pid in pids.items():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in self._procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- commands

    def env(self, extra: dict[str, str] | None = None, **more: str) -> dict[str, str]:
        """This process's environment without inherited SLURM_*/SBATCH_* variables, plus SLURM_CONF
        (and ``extra``/``more``): pass it to every subprocess that runs a SLURM command."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra or {})
        env.update(more)
        return env

    def run(self, command: str, *args: str, check: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
        """Run a SLURM command (``sbatch``, ``scontrol``, ...) against this cluster; text output captured."""
        argv = [self.bin.get(command, command), *map(str, args)]
        res = subprocess.run(argv, env=self.env(env), capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and res.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} exited with {res.returncode}\n"
                             f"stdout: {res.stdout}\nstderr: {res.stderr}")
        return res

    def submit(self, script: str | os.PathLike | None = None, *args: str, options: list[str] | tuple = (),
               wrap: str | None = None, env: dict[str, str] | None = None, cwd: str | os.PathLike = REPO_ROOT,
               wait: bool = True, timeout: float = 120) -> SlurmJob:
        """``sbatch [options] script args`` (or ``--wrap``) from ``cwd`` (the repository by default) with
        ``cluster.env(env)``. The job's output goes to ``<cluster>/jobs/%x-%j.out`` unless ``options`` name
        ``--output``. With ``wait`` (the default) returns once the job (every task of an array) has
        finished, with ``returncode`` set; a job still running after ``timeout`` s is cancelled and
        SlurmError raised with its output and the daemons' logs.

        Waiting polls ``scontrol show job`` every 0.25 s instead of running ``sbatch --wait``, whose
        polls back off to 2, 10, 42, 74 ... s after submission; the exit code is the same."""
        if (script is None) == (wrap is None):
            raise ValueError("give either a script or wrap=COMMAND")
        argv = ["--parsable", f"--output={self.jobs_dir}/%x-%j.out", *options]
        argv += ["--wrap", wrap] if wrap is not None else [str(script), *args]
        res = self.run("sbatch", *argv, env=env, cwd=cwd)
        job = SlurmJob(self, res.stdout.strip().split(";")[0])
        return job.wait(timeout) if wait else job

    def records(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job -o JOB``: one dict per job (per task of an array); [] once forgotten."""
        res = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        return [parse_record(line) for line in res.stdout.splitlines() if line.startswith("JobId=")]

    def state(self, job_id: str) -> str:
        """JobState of a job (of an array's tasks, comma-joined), e.g. RUNNING; '' if unknown."""
        return ",".join(r.get("JobState", "?") for r in self.records(job_id))

    def wait(self, job_id: str, timeout: float = 120, poll: float = 0.25) -> list[dict[str, str]]:
        """The job's records once every one is in a final state (a requeued job is waited for again)."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records(job_id)
            if recs and all(r.get("JobState") in FINAL_STATES for r in recs):
                return recs
            hopeless = [r for r in recs if r.get("JobState") == "PENDING" and r.get("Reason") in HOPELESS_REASONS]
            if hopeless or time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)
                out = SlurmJob(self, job_id, recs).output()[-4000:]
                states = ", ".join(f"{r.get('JobState')} ({r.get('Reason')})" for r in recs)
                why = (f"can never start here (nodes {', '.join(self.nodes)} have {CPUS_PER_NODE} CPUs each)"
                       if hopeless else f"not finished after {timeout:.0f} s")
                raise SlurmError(f"job {job_id} {why}; states: {states}; cancelled it.\n"
                                 f"--- job output (tail):\n{out}\n{self.logs()}")
            time.sleep(poll)

    def wait_state(self, job_id: str, states: str | tuple[str, ...] = "RUNNING", timeout: float = 60) -> str:
        """Until the job (every record) is in one of ``states``; returns the state reached."""
        wanted = (states,) if isinstance(states, str) else tuple(states)
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records(job_id)
            if recs and all(r.get("JobState") in wanted for r in recs):
                return recs[0]["JobState"]
            if recs and all(r.get("JobState") in FINAL_STATES - set(wanted) for r in recs):
                raise SlurmError(f"job {job_id} ended ({recs[0].get('JobState')}) before reaching {wanted}")
            if time.monotonic() > deadline:
                states = [f"{r.get('JobState')} ({r.get('Reason')})" for r in recs]
                raise SlurmError(f"job {job_id} not in {wanted} after {timeout:.0f} s (states: {', '.join(states)})"
                                 f"\n{self.logs()}")
            time.sleep(0.2)

    def signal(self, job_id: str, sig: str = "USR1", batch: bool = True) -> None:
        """``scancel --signal=SIG [--batch] JOB``: with ``batch`` only the batch shell gets it (what a
        ``trap`` in the script needs); without, every step's tasks do."""
        self.run("scancel", f"--signal={sig}", *(["--batch"] if batch else []), job_id)

    def completions(self) -> list[dict[str, str]]:
        """Every job end the controller logged (jobcomp/filetxt), oldest first: a requeued job appears once
        per run. Records stay here after ``scontrol`` forgets the job."""
        path = self.root / "log" / "jobcomp.txt"
        text = path.read_text(errors="replace") if path.exists() else ""
        return [parse_record(line) for line in text.splitlines() if line.startswith("JobId=")]

    def queue(self) -> list[str]:
        """Ids of the jobs pending, running or completing."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def cancel_all(self, timeout: float = 60) -> None:
        """``scancel`` every job and wait until the queue is empty."""
        if not self.queue():
            return
        self.run("scancel", f"--user={os.getuid()}", check=False)
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise SlurmError(f"jobs {self.queue()} still queued {timeout:.0f} s after scancel\n{self.logs()}")
            time.sleep(0.2)

    def ensure_nodes_idle(self, timeout: float = 30) -> None:
        """Bring drained or down nodes back (a test that killed a job badly can drain one) and wait for idle."""
        res = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        states = [line.split() for line in res.stdout.splitlines()]
        bad = [s[0] for s in states if len(s) == 2 and s[1] != "idle"]
        if bad:
            self.run("scontrol", "update", f"NodeName={','.join(bad)}", "State=RESUME", check=False)
            self.wait_nodes_idle(timeout)

    def logs(self, lines: int = 40) -> str:
        """The tail of each daemon's log (its console output when it has no log file yet) and of the
        job-completion log, for error messages."""
        log_dir = self.root / "log"
        paths = [log_dir / f"{name}.log" if (log_dir / f"{name}.log").exists() else log_dir / f"{name}.console"
                 for name in self._procs]
        parts = []
        for path in [*paths, log_dir / "jobcomp.txt"]:
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(text)} lines):\n" + "\n".join(text))
        return "\n".join(parts) or "(no daemon logs)"
