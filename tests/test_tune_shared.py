"""`maskinit tune` across machines: workers that share one study only through its storage (a real
PostgreSQL server started by pgserver, or Optuna's journal file), each with an output folder of its
own. A worker SIGKILLed in the middle of a trial: the trial is failed and run again by another
worker, no trial is lost or run twice, and every worker writes the same best_config.yaml; a trial
of a worker killed on another machine is failed by the heartbeat after the grace period. Workers
on the scheduler's GPUs; a missing driver and an unreachable server refused in one line, nothing
written. Trials are 4 iterations of the tiny preset on the generated COCO set, evaluated every 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from maskinit.cli import app
from maskinit.errors import MaskinitError
from maskinit.tune import (
    HOST,
    PID,
    POSTGRES_EXTRA,
    SURPLUS,
    allocated_gpus,
    database_url,
    fail_dead_trials,
    fail_stale_trials,
    open_storage,
    sampler_seed,
    worker_env,
)

runner = CliRunner()
TINY = ("--preset", "tiny", "--max-iter", "4", "--eval-period", "2", "--ims-per-batch", "2", "--seed", "0",
        "--pruner", "none")
GRACE = "6"  # seconds without a heartbeat before a killed worker's trial is failed and run again


def data_args(coco) -> list[str]:
    return ["--train-json", coco.train_json, "--train-images", coco.train_images,
            "--val-json", coco.val_json, "--val-images", coco.val_images]


def tune_command(coco, out: Path, storage: str, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "maskinit", "tune", *TINY, "--device", "cpu", "--trials", str(trials),
            "--storage", storage, "--study-name", "shared", "--grace-period", GRACE, "--output-dir", str(out),
            *extra, *data_args(coco)]


def start(command: list[str], log: Path, **env) -> subprocess.Popen:
    with open(log, "wb") as stream:
        return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=stream,
                                stderr=subprocess.STDOUT)


def kill_in_a_trial(worker: subprocess.Popen, out: Path, storage, timeout: float = 240) -> int:
    """SIGKILL `worker` once it has a trial running whose training started; returns the trial's number."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, f"worker ended ({worker.returncode}) before it could be killed"
        study = optuna.load_study(study_name="shared", storage=storage) if _has_study(storage) else None
        for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if study else []:
            log = out / f"trial-{trial.number:04d}" / "log.txt"
            if trial.user_attrs.get(PID) == worker.pid and log.is_file() and "Starting training" in log.read_text():
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                return trial.number
        time.sleep(0.2)
    raise AssertionError("the worker never ran a trial")


def _has_study(storage) -> bool:
    return "shared" in optuna.get_all_study_names(storage)


def finish(workers: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    for worker, log in zip(workers, logs):
        try:
            worker.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            raise AssertionError(f"a worker did not finish: {log.read_text()[-3000:]}") from None
        assert worker.returncode == 0, log.read_text()[-3000:]


def check_shared_study(storage, trials: int, killed: int, outs: list[Path]) -> None:
    """`trials` complete trials, each parameter set once; the killed trial failed and run again with its
    parameters; no trial running or queued; each trial trained once; the same best config everywhere."""
    study = optuna.load_study(study_name="shared", storage=storage)
    all_trials = study.get_trials()
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials, [(t.number, t.state.name) for t in all_trials]
    params = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(params)) == trials  # no parameter set run twice, none drawn twice by two workers
    states = {t.number: t for t in all_trials}
    assert states[killed].state == optuna.trial.TrialState.FAIL
    [retry] = [t for t in complete if t.system_attrs.get("retry_history") == [killed]]
    assert retry.params == states[killed].params
    others = [t for t in all_trials if t.state != optuna.trial.TrialState.COMPLETE and t.number != killed]
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(SURPLUS) for t in others), others
    for trial in complete:  # trained once, in its own worker's folder
        log = Path(trial.user_attrs["output_dir"]) / "log.txt"
        assert log.read_text().count("Starting training from iteration 0") == 1
    best = [(out / "best_config.yaml").read_bytes() for out in outs]
    assert len(set(best)) == 1 and best[0].startswith(b"# maskinit tune: best trial"), [out for out in outs]
    best_trial = max(complete, key=lambda t: (t.value, -t.number))
    assert f"best trial {best_trial.number} of study shared".encode() in best[0]
    rows = json.loads((outs[-1] / "trials.json").read_text())
    assert {row["number"] for row in rows} == {t.number for t in all_trials if not t.user_attrs.get(SURPLUS)}


@pytest.fixture()
def postgres():
    """A real PostgreSQL server (pgserver: on a unix socket in a temporary folder); its URL."""
    import pgserver

    folder = tempfile.mkdtemp(prefix="pg", dir="/tmp")  # short: a unix socket path has ~100 characters
    try:
        server = pgserver.get_server(folder, cleanup_mode="stop")
    except Exception as error:  # noqa: BLE001 - any reason fails the test: pgserver is in the test extra and the lock
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"PostgreSQL (pgserver) cannot start here: {error}")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------ shared studies


def workers_with_one_killed(coco, url: str, storage, count: int, trials: int, tmp_path: Path):
    """`count` workers on one study, an output folder each ("machine-N"); worker 0 is SIGKILLed in a trial and
    the others run the study to its end. Returns the folders and the killed trial's number."""
    outs = [tmp_path / f"machine-{index}" for index in range(count)]
    logs = [tmp_path / f"worker-{index}.log" for index in range(count)]
    workers = [start(tune_command(coco, out, url, trials), log) for out, log in zip(outs, logs)]
    try:
        killed = kill_in_a_trial(workers[0], outs[0], storage)
        finish(workers[1:], logs[1:])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    return outs, killed


def late_worker(coco, out: Path, url: str, trials: int) -> None:
    """A worker started once the study is done: it runs no trial and ends with exit 0."""
    late = subprocess.run(tune_command(coco, out, url, trials), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert late.returncode == 0, late.stdout[-2000:] + late.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR")  # pgserver's runtime folder: /tmp where it is not set
@pytest.mark.xdist_group("processes")
def test_three_workers_share_a_postgresql_study_and_a_killed_workers_trial_runs_again(coco, postgres, tmp_path):
    """Three `maskinit tune` processes, as on three machines: one PostgreSQL study (a plain postgresql://
    URL: the installed driver is used), an output folder each. Worker 0 is SIGKILLed in a trial: the
    heartbeat (or, on its own machine, its gone process) gets the trial failed and run again."""
    storage = open_storage(postgres, int(GRACE))
    outs, killed = workers_with_one_killed(coco, postgres, storage, 3, 9, tmp_path)
    # a worker that joins once the study is done writes the same best config (no folder shared)
    late_worker(coco, tmp_path / "late", postgres, 9)
    check_shared_study(storage, 9, killed, [outs[1], outs[2], tmp_path / "late"])
    assert not list((tmp_path / "late").glob("trial-*"))  # the late worker ran no trial


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_two_workers_share_a_journal_file_and_a_killed_workers_trial_runs_again(coco, tmp_path):
    """Optuna's journal file on a filesystem both workers see (no database server)."""
    journal = tmp_path / "shared" / "study.journal"
    journal.parent.mkdir()
    url = f"journal://{journal}"
    storage = open_storage(url, int(GRACE))
    outs, killed = workers_with_one_killed(coco, url, storage, 2, 4, tmp_path)
    late_worker(coco, tmp_path / "late", str(journal), 4)  # a plain .journal path
    check_shared_study(open_storage(url, int(GRACE)), 4, killed, [outs[1], tmp_path / "late"])


# ------------------------------------------------------------------------------------------ GPUs and seeds


def test_each_worker_gets_its_entry_of_the_schedulers_gpu_allocation():
    allocation = {"CUDA_VISIBLE_DEVICES": "2,3", "PATH": "/bin"}
    assert allocated_gpus(allocation, gpus=2) == ["2", "3"]
    assert [worker_env(i, 2, "cuda", allocation, gpus=2)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["2", "3"]
    assert [worker_env(i, 3, None, allocation, gpus=2)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["2", "3", "2"]
    uuids = {"CUDA_VISIBLE_DEVICES": "GPU-a1, GPU-b2"}
    assert [worker_env(i, 2, "cuda:0", uuids, gpus=2)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["GPU-a1", "GPU-b2"]
    assert worker_env(0, 2, "cuda", {}, gpus=2)["CUDA_VISIBLE_DEVICES"] == "0"  # no allocation: torch's GPUs
    assert allocated_gpus({"CUDA_VISIBLE_DEVICES": ""}, gpus=0) == []  # none allocated: the CPU
    hidden = worker_env(0, 2, "cuda", {"CUDA_VISIBLE_DEVICES": ""}, gpus=0)  # left as it is, the cores shared
    assert hidden["CUDA_VISIBLE_DEVICES"] == "" and hidden["OMP_NUM_THREADS"]
    cpu = worker_env(1, 2, "cpu", allocation, gpus=2)  # --device cpu: the allocation is left as it is
    assert cpu["CUDA_VISIBLE_DEVICES"] == "2,3" and cpu["OMP_NUM_THREADS"]


def test_sampler_seeds_differ_per_worker_and_stay_reproducible_alone():
    seeds = {sampler_seed(0, 0, f"host-{h}:{pid}") for h in range(3) for pid in (100, 101)}
    assert len(seeds) == 6 and all(0 <= seed < 2**32 for seed in seeds)
    assert sampler_seed(0, 0, "host:1") == sampler_seed(0, 0, "host:1")
    assert sampler_seed(0, 0) == 0 and sampler_seed(0, 5) == 5 and sampler_seed(None, 3, "h:1") is None


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_workers_launched_on_the_allocated_gpus_see_their_own(coco, tmp_path):
    """`--workers 2` under CUDA_VISIBLE_DEVICES=2,3 (as a scheduler sets it): the trials of worker i saw
    the i-th GPU of the allocation (this machine has none: the trials train on the CPU all the same)."""
    out = tmp_path / "gpus"
    url = f"journal://{tmp_path / 'gpus.journal'}"
    command = [sys.executable, "-m", "maskinit", "tune", *TINY, "--trials", "2", "--workers", "2", "--storage", url,
               "--study-name", "shared", "--output-dir", str(out), *data_args(coco)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "2,3", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    pids = {}
    for index, gpu in enumerate(("2", "3")):
        line = next(line for line in done.stderr.splitlines() if line.startswith(f"worker {index} (GPU {gpu}): pid "))
        pids[int(line.split("pid ")[1].split(",")[0])] = gpu
    trials = optuna.load_study(study_name="shared", storage=open_storage(url)).get_trials()
    seen = {t.user_attrs[PID]: t.user_attrs["gpus"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert seen and all(pids[pid] == gpu for pid, gpu in seen.items()), (pids, seen)


# ------------------------------------------------------------------------------------------ refusals


def test_a_plain_postgresql_url_gets_the_installed_driver_and_a_missing_one_names_the_extra():
    import importlib.util

    assert importlib.util.find_spec("psycopg2") is not None
    url = "postgresql://user:secret@db.example/study"
    chosen = database_url(url)
    assert chosen.startswith("postgresql") and "secret" in chosen  # the password kept for the connection
    from sqlalchemy.engine import make_url

    assert make_url(chosen).get_driver_name() in ("psycopg2", "psycopg")
    __import__(make_url(chosen).get_driver_name())  # a driver that imports
    if importlib.util.find_spec("psycopg") is None:  # psycopg 3 is not installed: naming it is refused
        with pytest.raises(MaskinitError, match=r"no PostgreSQL driver \(psycopg\) is installed: .*\[postgres\]"):
            database_url("postgresql+psycopg://user:secret@db.example/study")
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.slow
def test_a_missing_driver_is_one_line_naming_the_extra_and_nothing_is_written(coco, tmp_path):
    out = tmp_path / "nodriver"
    block = ("import sys; sys.modules['psycopg2'] = sys.modules['psycopg'] = None; sys.argv[0] = 'maskinit'; "
             "from maskinit.cli import app; app(prog_name='maskinit')")
    command = [sys.executable, "-c", block, *tune_command(coco, out, "postgresql://user:secret@127.0.0.1/db", 2)[3:]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert POSTGRES_EXTRA in lines[0] and "Traceback" not in done.stderr and "secret" not in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_an_unreachable_database_is_one_line_and_nothing_is_written(coco, tmp_path):
    out = tmp_path / "unreachable"
    command = ["tune", *TINY, "--device", "cpu", "--trials", "2", "--output-dir", str(out), *data_args(coco)]
    outcome = runner.invoke(app, [*command, "--storage", "postgresql://user:secret@127.0.0.1:9/db"])
    assert outcome.exit_code == 2, outcome.output
    lines = [line for line in outcome.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot open the study storage" in lines[0] and "127.0.0.1:9" in lines[0], outcome.output
    assert "secret" not in outcome.output and not out.exists()
    journal = runner.invoke(app, [*command, "--storage", f"journal://{tmp_path}/no/x.log"])
    assert journal.exit_code == 2 and "does not exist" in journal.output and not out.exists(), journal.output


# ------------------------------------------------------------------------------------------ the heartbeat

KILLED_ELSEWHERE = """
import os, signal, sys, threading
import optuna
from maskinit.tune import HOST, PID, open_storage

study = optuna.load_study(study_name="shared", storage=open_storage(sys.argv[1], 2))

def objective(trial):
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr(HOST, "another-machine")
    trial.set_user_attr(PID, os.getpid())
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGKILL)).start()  # after a heartbeat or two
    threading.Event().wait()

study.optimize(objective, n_trials=1)
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR")
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_trial_killed_on_another_machine_is_failed_and_queued_again_after_the_grace_period(kind, tmp_path, request):
    """Only the heartbeat can tell that a worker on another machine went away (its process id means
    nothing here): its trial is failed once the grace period has passed, and queued again."""
    url = f"journal://{tmp_path / 'study.journal'}" if kind == "journal" else request.getfixturevalue("postgres")
    storage = open_storage(url, 2)
    optuna.create_study(storage=storage, study_name="shared")
    done = subprocess.run([sys.executable, "-c", KILLED_ELSEWHERE, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    [trial] = study.get_trials()
    assert trial.state == optuna.trial.TrialState.RUNNING and trial.user_attrs[HOST] == "another-machine"
    assert fail_dead_trials(study) == []  # not this machine's process: left to the heartbeat
    deadline = time.monotonic() + 30
    while not (queued := fail_stale_trials(study)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert queued == [0]
    failed, retry = study.get_trials()
    assert failed.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.WAITING
    assert retry.params == failed.params and HOST not in retry.user_attrs
    assert fail_stale_trials(study) == [] and len(study.get_trials()) == 2  # failed and queued once


def _start_queued_trials(url: str, count: int, results) -> None:
    """One worker process: start `count` trials of the shared SQLite study (queued ones first, as
    Study.optimize does) and report which it got."""
    from maskinit.tune.storage import open_storage

    study = optuna.load_study(study_name="queue", storage=open_storage(url))
    results.put([(trial.number, trial.user_attrs.get("queued")) for trial in (study.ask() for _ in range(count))])


@pytest.mark.slow
@pytest.mark.xdist_group("processes")
def test_workers_on_one_sqlite_file_never_start_the_same_queued_trial(tmp_path):
    """SQLite ignores the SELECT ... FOR UPDATE with which Optuna starts a queued trial: four processes
    taking 40 queued trials at once each get trials no other got, and every queued trial starts once."""
    import multiprocessing

    from maskinit.tune.storage import open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="queue", storage=open_storage(url))
    for index in range(40):
        study.enqueue_trial({"x": index / 40}, user_attrs={"queued": index})
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_start_queued_trials, args=(url, 10, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    got = [pair for _ in workers for pair in results.get(timeout=300)]
    for worker in workers:
        worker.join(timeout=60)
    numbers = [number for number, _ in got]
    assert len(numbers) == len(set(numbers)) == 40, sorted(numbers)
    assert sorted(queued for _, queued in got) == list(range(40))
