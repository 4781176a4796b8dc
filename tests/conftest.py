"""Shared test setup: no network, W&B offline, small thread counts."""

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("RAY_ADDRESS", None)


def subprocess_env(home: Path, ray_tmp: str) -> dict:
    """Environment for a command subprocess: offline W&B writing under `home`, no cluster
    address, no user key, Ray's temp dir `ray_tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_"))}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(home), HOME=str(home),
               PYTHONPATH=str(ROOT), RAY_TMPDIR=ray_tmp)
    return env


@pytest.fixture
def sweep_env(tmp_path):
    """Environment for a sweep subprocess, with a private Ray temp dir (short: Ray's socket
    paths must stay under 108 bytes)."""
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    yield subprocess_env(tmp_path, ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def made_once(name: str, tmp_path_factory, make) -> Path:
    """The directory `make(directory)` fills, made once per test run: the first test to ask
    (in any pytest worker) makes it, the others wait for it, and all read it, never change
    it. For a run that tests in several modules check from different sides: the same
    model is not trained twice. A `make` that fails is tried again by the next test."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the test run's directory, which its workers share
    directory = base / f"made-once-{name}"
    with FileLock(f"{directory}.lock"):
        if not (directory / ".made").exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            make(directory)
            (directory / ".made").touch()
    return directory


def sweep_made_once(key: str, tmp_path_factory, name: str, *args, env: dict | None = None,
                    inspect=None) -> tuple[str, str, Path]:
    """(stdout, stderr, sweep directory) of `python -m orchestrator.sweep NAME ARGS` (storage
    ./runs of a `made_once(key)` directory, which is also its HOME and W&B dir, with a private
    Ray temp dir and `env` added to its environment), run once per test run.
    `inspect(directory, ray_tmp)` runs after the sweep, before its Ray temp dir is removed."""
    def make(directory: Path) -> None:
        ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        try:
            proc = command("sweep", name, *args, "--storage", directory / "runs",
                           env={**subprocess_env(directory, ray_tmp), **(env or {})},
                           cwd=directory)
            if inspect is not None:
                inspect(directory, Path(ray_tmp))
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        (directory / "stdout.txt").write_text(proc.stdout)
        (directory / "stderr.txt").write_text(proc.stderr)

    directory = made_once(key, tmp_path_factory, make)
    (sweep_dir,) = (directory / "runs").glob(f"{name}-*")
    return ((directory / "stdout.txt").read_text(), (directory / "stderr.txt").read_text(),
            sweep_dir)


@pytest.fixture(scope="session", autouse=True)
def no_checkpoint_dirs_left_behind():
    """At the end of the session, the temporary checkpoint directories of trials that
    tests killed are removed (those of live processes stay)."""
    yield
    from orchestrator.tune.session import clean_stale_checkpoint_dirs

    clean_stale_checkpoint_dirs()


@pytest.fixture(scope="session")
def alpha_diglm_ddp_sweep(tmp_path_factory):
    """(console output, sweep directory) of the alpha_diglm smoke sweep on Ray Train's path
    (2 gloo DDP workers, W&B offline), made once: test_generative_e2e checks its models and
    OOD stage, test_storage_s3 compares the same sweep run on S3 with it."""
    stdout, _, sweep_dir = sweep_made_once("alpha_diglm_ddp", tmp_path_factory, "alpha_diglm",
                                           "--profile", "smoke", "--num-workers", 2,
                                           "--wandb", "offline")
    return stdout, sweep_dir


@pytest.fixture(scope="session")
def vae_smoke_sweep(tmp_path_factory):
    """(console output, sweep directory) of the vae_ood smoke sweep with 30 epochs, each
    reported, status lines every 0.2 s and W&B offline, made once: test_console checks its
    status lines, test_vae_ood its results, OOD stage and W&B runs."""
    stdout, stderr, sweep_dir = sweep_made_once(
        "vae_smoke", tmp_path_factory, "vae_ood", "--profile", "smoke", "--set", "epochs=30",
        "--set", "patience=100", "--set", "report_seconds=0", "--status-interval", "0.2",
        "--wandb", "offline")
    return stdout + stderr, sweep_dir


WANDB_SECRET = "sentinel-wandb-key-0123456789abcdef"  # a W&B API key no file may hold


@pytest.fixture(scope="session")
def gffn_smoke_sweep(tmp_path_factory):
    """(console output, sweep directory, the files that hold WANDB_SECRET) of the default
    batch_size_gffn smoke sweep (in-process trials, W&B offline, WANDB_SECRET as the W&B API
    key in its environment), made once: test_sweep_e2e checks its results, runs, console and
    that no file of the sweep or of its Ray temp dir holds the key; test_storage_s3 compares
    the same sweep run on S3 with it."""
    import json

    def find_key(directory: Path, ray_tmp: Path) -> None:
        hits = [str(path) for path in [*(directory / "runs").rglob("*"), *ray_tmp.rglob("*")]
                if path.is_file() and path.stat().st_size < 50_000_000
                and WANDB_SECRET.encode() in path.read_bytes()]
        (directory / "key_found_in.json").write_text(json.dumps(hits))

    stdout, _, sweep_dir = sweep_made_once(
        "gffn_smoke", tmp_path_factory, "batch_size_gffn", "--profile", "smoke", "--wandb",
        "offline", env={"WANDB_API_KEY": WANDB_SECRET}, inspect=find_key)
    return stdout, sweep_dir, json.loads((sweep_dir.parents[1] / "key_found_in.json").read_text())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment for the command subprocesses of one test module: offline W&B, a private
    HOME and Ray temp dir (short: Ray's socket paths must stay under 108 bytes)."""
    home = tmp_path_factory.mktemp("home")
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = subprocess_env(home, ray_tmp)
    del env["WANDB_DIR"]  # W&B writes where each command's storage says
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def run_captured(argv: list[str], *, env: dict | None, timeout: float,
                 cwd: Path | None = None):
    """`subprocess.run(argv, capture_output=True, text=True)`, except that a command still
    running at `timeout` first has the Python stack of every process of its tree printed
    (py-spy, which Ray ships: the driver, Ray's trial, Train controller and worker
    processes) and its output's tail, and then the whole tree is killed: a hang seen once
    in CI leaves where each process waited, not only that the test timed out."""
    import subprocess

    import psutil

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        print_stacks(proc.pid)
        for process in psutil.Process(proc.pid).children(recursive=True):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        proc.kill()
        out, err = proc.communicate()
        print(f"--- the command's output, last 3000 characters:\n{out[-3000:]}\n{err[-3000:]}")
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def print_stacks(pid: int) -> None:
    """Print the Python stack of process `pid` and of each of its descendants (py-spy)."""
    import subprocess

    import psutil

    py_spy = Path(sys.executable).with_name("py-spy")
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            name = " ".join(process.cmdline())[:160]
        except psutil.Error:
            continue
        if "python" not in name.split(" ")[0] and not name.startswith("ray::"):
            continue  # Ray's C++ daemons (gcs_server, raylet) have no Python stack
        try:
            dump = subprocess.run([str(py_spy), "dump", "--pid", str(process.pid)],
                                  capture_output=True, text=True, timeout=20)
            stack = dump.stdout + dump.stderr
        except (OSError, subprocess.TimeoutExpired) as error:  # never hide the test's own error
            stack = f"(no stack: {error})\n"
        print(f"--- process {process.pid}: {name}\n{stack}")


def command(module: str, *args, env: dict, timeout: float = 600, check: bool = True,
            cwd: Path | None = None):
    """Run `python -m orchestrator.<module> ARGS`; with `check`, assert it exits 0 (showing
    the output's tail if not)."""
    proc = run_captured([sys.executable, "-m", f"orchestrator.{module}", *map(str, args)],
                        env=env, timeout=timeout, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def command_in_process(module: str, *args, env: dict | None = None, cwd: Path | None = None):
    """`python -m orchestrator.<module> ARGS` run in this process through what its `__main__`
    runs (`run_command(build_parser(), main, argv)`), with `env` as the whole environment and
    `cwd` as the directory meanwhile: its exit code and output, as `command(..., check=False)`
    returns them, without the ~4 s of a new interpreter importing torch and Ray. For bad
    input a command refuses before its work starts; each command's process contract (exit 2,
    one line, no traceback) is also held by a test that runs it as its own process. An
    exception that escapes `run_command` is printed as the interpreter would (its traceback
    on stderr, exit code 1), and a command that started Ray fails the test."""
    import contextlib
    import importlib
    import io
    import subprocess
    import traceback

    argv = [str(a) for a in args]
    cli = importlib.import_module(f"orchestrator.{module}")
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.run_command(cli.build_parser(), cli.main, argv)
            except SystemExit as exit_:  # argparse's own errors and --help
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), f"{module} {argv} started Ray in-process"
    return subprocess.CompletedProcess([module, *argv], code, out.getvalue(), err.getvalue())


def free_port() -> int:
    """A free TCP port on localhost, for a gloo process group in tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_when_running(pattern: str, timeout: float = 60.0):
    """Start a thread that SIGKILLs, for real, the first process of this test whose command
    line holds `pattern` (e.g. `RayTrainWorker`) once one exists. Only this process's
    descendants are candidates (the Ray nodes a test starts, their workers, its commands'
    processes): a test running beside it in another pytest worker keeps its own. A process
    that has left by the time of the kill is tolerated: the thread looks again. Returns the
    thread and the list that receives the killed pid."""
    import threading
    import time

    import psutil

    killed: list[int] = []

    def kill() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for proc in psutil.Process().children(recursive=True):
                try:
                    if pattern in " ".join(proc.cmdline()):
                        proc.kill()
                        killed.append(proc.pid)
                        return
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread, killed


class ActorKiller:
    """SIGKILL one of `actors` while it executes `method` (`"AttackWorker.run"`).

    Ray titles an actor's process `ray::Class.method` while it runs that method, and
    `ray::Class` between calls. A thread watches the actors' own titles (/proc/PID/cmdline)
    and kills an actor the moment its title says it is mid-call: a condition, not a delay,
    so a unit of any length is hit whatever the machine's speed. A process that has moved
    on or gone is skipped and watched again. `stop()` ends the watch; `killed` holds the pid
    killed (empty if the work ended first: run it again).
    """

    def __init__(self, actors, method: str, poll: float = 0.001):
        import threading

        import ray

        self.pids = ray.get([actor.pid.remote() for actor in actors])
        self.method = method.encode()
        self.poll = poll
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _mid_call(self, pid: int) -> bool:
        try:
            return self.method in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone
            return False

    def _watch(self) -> None:
        import signal

        while not self._stop.is_set():
            for pid in self.pids:
                if self._mid_call(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed.append(pid)
                    return
            self._stop.wait(self.poll)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return self.killed


def train_digits_classifier(arch: str = "mlp", epochs: int = 10, width: int = 32, seed: int = 0):
    """(model in eval mode, dataset): a classifier trained with Adam on the embedded digits
    (10 epochs of the MLP: 315 of 360 test digits right), for tests that need mistakes."""
    import torch
    import torch.nn.functional as F

    from workloads.data import load_dataset
    from workloads.models import build_classifier

    torch.manual_seed(seed)
    data = load_dataset("digits")
    model = build_classifier(arch, data.input_shape, data.num_classes, width=width)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        for i in range(0, len(data.x_train), 64):
            optimizer.zero_grad()
            F.cross_entropy(model(data.x_train[i:i + 64]), data.y_train[i:i + 64]).backward()
            optimizer.step()
    return model.eval(), data


class BNDropoutNet(torch.nn.Module):
    """A digits classifier with batch norm and dropout in its features, the layers the paper
    models have (VGG16, DenseNet, WRN) and the digits MLPs lack."""

    provides = ("logits", "features", "dropout")

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32),
                                      nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x))


def model_state(model):
    """Every module's training flag, and a copy of every parameter and buffer, by name:
    what evaluation must leave as it found it."""
    flags = {name: module.training for name, module in model.named_modules()}
    tensors = {f"param {name}": p.detach().clone() for name, p in model.named_parameters()}
    tensors.update({f"buffer {name}": b.detach().clone() for name, b in model.named_buffers()})
    return flags, tensors


def assert_model_unchanged(model, before):
    """Assert that `model` has the flags, parameters and buffers of `before` (`model_state`),
    naming every module or tensor that changed."""
    import torch

    flags, tensors = model_state(model)
    changed_flags = {n: (before[0].get(n), f) for n, f in flags.items() if before[0].get(n) != f}
    assert not changed_flags, f"modes changed (before, after): {changed_flags}"
    assert set(tensors) == set(before[1]), "parameters or buffers added or removed"
    changed = [n for n, t in tensors.items() if not torch.equal(t, before[1][n])]
    assert not changed, f"changed: {changed}"


def pytest_collection_modifyitems(items):
    """The modules that hold slow tests first (a stable sort; the order within a module is
    kept): `make test`'s two workers take whole modules, the long ones early, and end
    together on the short ones."""
    def module(item):
        return item.nodeid.split("::")[0]

    slow = {module(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: module(item) not in slow)
