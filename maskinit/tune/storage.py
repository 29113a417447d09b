"""Where a study lives and what happens to the trials of a worker that went away.

The storage is an SQLite file in the output dir (one machine), a database several machines share
(PostgreSQL, MySQL: Optuna's RDB storage) or Optuna's journal file on a shared filesystem (no
server). Each has a heartbeat: a trial whose process stopped beating for the grace period is failed
and queued again by a worker still running, on any machine. A killed worker's trials on this
machine are failed at once, as a worker starts (its process is gone).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ..errors import MaskinitError, one_line

STUDY_FILE = "study.db"
# trial user attributes: who runs it (to fail a killed process's trials at once), how it ended, its config
HOST, PID = "maskinit_host", "maskinit_pid"
FAILURE, ERROR = "failure", "error"
BASELINE = "baseline"  # the trial that runs the config's own values (the study's first)
CONFIG = "config"  # a complete trial's config YAML (its best_config.yaml, written by any worker)
SURPLUS = "surplus"  # a trial started once the study had its --trials elsewhere: ended unrun, left out
HEARTBEAT = "maskinit_heartbeat"  # the journal storage's heartbeat: a trial system attribute (seconds)
JOURNAL_SUFFIXES = (".log", ".journal")
GRACE_PERIOD = 180  # seconds without a heartbeat after which a running trial is failed and queued again
POSTGRES_DRIVERS = ("psycopg2", "psycopg")  # SQLAlchemy's driver names, which are their modules' names
POSTGRES_EXTRA = "pip install maskinit[postgres]"


def storage_url(output_dir: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(Path(output_dir) / STUDY_FILE).resolve()}"


def journal_path(url: str) -> str | None:
    """The journal file of `journal:///PATH` or of a plain path ending .log/.journal; None otherwise."""
    if url.startswith("journal://"):
        return url[len("journal://"):]
    if "://" not in url and url.endswith(JOURNAL_SUFFIXES):
        return url
    return None


def shown_url(url: str) -> str:
    """The storage as messages show it: a database URL's password masked."""
    if journal_path(url) is not None:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: open_storage says so
        return url


def database_url(url: str) -> str:
    """`url` with a PostgreSQL driver that is installed: a plain `postgresql://` names SQLAlchemy's
    default driver (psycopg2 in SQLAlchemy 2.0, psycopg 3 in 2.1), and is given the other one when
    only that one imports. No driver: one line naming the `postgres` extra."""
    import importlib

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise MaskinitError(f"--storage {url!r}: not a database URL (postgresql://user:password@host/db, "
                            "sqlite:///FILE) or a journal file (journal:///PATH)") from error
    if parsed.get_backend_name() != "postgresql":
        return url
    default = parsed.get_driver_name()
    candidates = (default,) if "+" in parsed.drivername else (default, *(d for d in POSTGRES_DRIVERS if d != default))
    for driver in candidates:
        try:
            importlib.import_module(driver)
        except ImportError:
            continue
        if driver == default:
            return url
        return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    raise MaskinitError(f"--storage {shown_url(url)}: no PostgreSQL driver ({' or '.join(candidates)}) is installed: "
                        f"{POSTGRES_EXTRA}")


# Errors of two processes creating a new database's tables at once (SQLite, PostgreSQL, MySQL words;
# https://github.com/optuna/optuna/issues/1092): the loser finds the tables made and opens the storage again.
SCHEMA_RACE = ("already exists", "duplicate key", "UNIQUE constraint failed", "Duplicate entry")


def heartbeat_interval(grace_period: int) -> int:
    """Seconds between a running trial's heartbeats: a sixth of the grace period (at least 1)."""
    return max(1, grace_period // 6)


def open_storage(url: str, grace_period: int = GRACE_PERIOD, attempts: int = 5):
    """The study storage of `url` (a database URL, `journal:///PATH` or a `.log`/`.journal` path), with
    a heartbeat: a trial whose process stopped beating for `grace_period` seconds is failed and queued
    again by the next worker (any machine). SQLite waits for its lock; PostgreSQL gets a driver that is
    installed (database_url). Workers started together on a new database race to create its tables:
    the loser tries again. A missing driver, an unreachable server, a bad URL: one line, nothing made."""
    import warnings

    import optuna

    if grace_period < 2:
        raise MaskinitError(f"--grace-period must be at least 2 seconds, got {grace_period}")
    path = journal_path(url)
    if path is not None:
        return open_journal(path, grace_period)
    url = database_url(url)
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        kwargs = {"connect_args": {"connect_timeout": 10}}
    else:
        kwargs = {}
    for attempt in range(attempts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, grace_period=grace_period,
                                                     heartbeat_interval=heartbeat_interval(grace_period),
                                                     heartbeat_stale_trial_callback=retry_trial)
                return serialized_sqlite(storage) if url.startswith("sqlite") else storage
            except Exception as error:  # a bad URL, an unreachable server, a missing driver
                if attempt + 1 < attempts and any(words in str(error) for words in SCHEMA_RACE):
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise MaskinitError(f"cannot open the study storage {shown_url(url)}: {one_line(error)}") from error


def serialized_sqlite(storage):
    """`storage` (an Optuna RDBStorage on SQLite) with every transaction taking the database's write lock
    when it begins (BEGIN IMMEDIATE), SQLAlchemy's recipe for pysqlite transactions.

    Optuna starts a queued trial (the baseline, a trial queued again) by reading that it is waiting and
    then marking it running, in one transaction with SELECT ... FOR UPDATE, which SQLite ignores: two
    workers that read it at the same moment both ran it (the second found its folder in use, and the
    first could not record its result on the trial the second had failed). Serialized, the second reads
    that it is running and takes another trial."""
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # pysqlite's own deferred BEGIN off: the "begin" event below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # the connections made before the listeners are closed: new ones get them
    return storage


def open_journal(path: str, grace_period: int = GRACE_PERIOD):
    """Optuna's journal file storage (a file on a filesystem every worker shares, locked by opening a
    lock file: NFS-safe), with a heartbeat (HeartbeatJournalStorage)."""
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise MaskinitError(f"cannot open the journal file {path}: its folder {folder} does not exist")
    try:
        return _heartbeat_journal_class()(str(Path(path).expanduser()), heartbeat_interval(grace_period), grace_period,
                                          retry_trial)
    except OSError as error:
        raise MaskinitError(f"cannot open the journal file {path}: {error.strerror}") from error


def _heartbeat_journal_class():
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
    from optuna.trial import TrialState

    class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
        """Optuna's JournalStorage with the heartbeat Optuna gives RDBStorage only: a killed worker's
        trial would otherwise stay running forever. Optuna's optimize loop beats and fails stale trials
        for a storage that is a `BaseHeartbeat`, a private class (maskinit/internals.py,
        `optuna_base_heartbeat`), hence the subclass. A heartbeat is a trial system attribute holding
        the worker's clock: the machines' clocks must agree to well within the grace period. A trial
        is finished under a lock file, so that one two workers find stale is failed and queued again
        once (RDBStorage refuses to update a finished trial in the same way)."""

        def __init__(self, path: str, interval: int, grace_period: int, callback):
            super().__init__(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
            self.path = path
            self.heartbeat_interval = interval
            self.grace_period = grace_period
            self.callback = callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            return [self.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                    for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                    if now - trial.system_attrs.get(HEARTBEAT, now) > self.grace_period]

        def get_heartbeat_interval(self) -> int:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self):
            return self.callback

        def set_trial_state_values(self, trial_id: int, state, values=None) -> bool:
            if not state.is_finished():
                return super().set_trial_state_values(trial_id, state, values)
            lock = JournalFileOpenLock(self.path + ".finish")
            lock.acquire()
            try:
                trial = self.get_trial(trial_id)
                if trial.state.is_finished():
                    raise UpdateFinishedTrialError(f"trial {trial.number} is already finished")
                return super().set_trial_state_values(trial_id, state, values)
            finally:
                lock.release()

    return HeartbeatJournalStorage


def create_or_load_study(storage, name: str, sampler, pruner):
    """The study `name` in `storage` and whether this call created it (atomic in the storage: of
    workers starting together, exactly one creates it, and only that one queues the baseline)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                       pruner=pruner), True
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner), False


def retry_trial(study, trial) -> None:
    """Queue a trial that did not end by itself (killed, interrupted, stale) again with its parameters,
    as Optuna's RetryHeartbeatStaleTrialCallback does, without the old trial's worker attributes and
    heartbeat: copied, the dead process's id would get the queued trial failed again by a worker on
    its machine between the moment another worker picks it up and the moment it records its own."""
    import optuna

    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    dropped = ("retry_history", "failed_trial", HEARTBEAT)
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in dropped}
    worker_attrs = (HOST, PID, FAILURE, ERROR, "interrupted", "gpus")
    study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k not in worker_attrs},
        system_attrs={**system_attrs, "failed_trial": history[0], "retry_history": history},
    ))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_trial(study, number: int):
    """Trial `number` failed (study.tell) and queued again (retry_trial), unless another worker got there
    first (then None). Returns the failed trial."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        failed = study.tell(number, state=TrialState.FAIL)
    except (ValueError, UpdateFinishedTrialError):  # already finished: by its worker or another one
        return None
    retry_trial(study, failed)
    return failed


def fail_dead_trials(study) -> list[int]:
    """Running trials of this machine whose process is gone (killed): failed and queued again at once
    (the heartbeat would only after its grace period). Returns their numbers."""
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get(PID)
        if trial.user_attrs.get(HOST) != host or pid is None or pid == os.getpid() or _alive(pid):
            continue
        if fail_trial(study, trial.number) is not None:
            failed.append(trial.number)
    return failed


def fail_stale_trials(study) -> list[int]:
    """Running trials whose heartbeat stopped for the grace period (their worker, on any machine, went
    away): failed and queued again by Optuna's fail_stale_trials and the storage's callback
    (retry_trial). Returns the numbers of the trials queued again."""
    import warnings

    import optuna

    before = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    queued = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    return [t.system_attrs["retry_history"][-1] for t in queued
            if t.number not in before and "retry_history" in t.system_attrs]


def counted(trial) -> bool:
    """A finished trial that counts toward `--trials`: complete, pruned, or failed by itself (diverged,
    an error); not one failed because its process was killed or interrupted (it is queued again)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and FAILURE in trial.user_attrs and SURPLUS not in trial.user_attrs


def holds_a_place(trial) -> bool:
    """A trial that is or will be one of the study's `--trials`: counted, running or queued."""
    from optuna.trial import TrialState

    started = trial.state in (TrialState.RUNNING, TrialState.WAITING)
    return counted(trial) or (started and SURPLUS not in trial.user_attrs)


def is_surplus(study, number: int, trials: int | None) -> bool:
    """Whether trial `number`, just started, is one too many: the trials numbered before it already fill
    the study's `trials` places (workers that each saw one place left started one each). Trial numbers
    are given out by the storage, in order: of such workers, those that started last stand down."""
    if trials is None:
        return False
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and holds_a_place(t)) >= trials


def study_name_for(output_dir: Path, storage: str | None, study_name: str | None) -> str:
    """The default storage holds this one study; a shared database tells its studies apart by name."""
    return study_name or ("maskinit" if storage is None else Path(output_dir).resolve().name)

