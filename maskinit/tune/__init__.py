"""`maskinit tune`: a hyperparameter search over ordinary maskinit training runs, on Optuna.

Each trial is one `train.train` run in its own folder (`<output dir>/trial-NNNN`, by trial number)
with the trial's values written into the config as explicit keys. Optuna does the searching (TPE
sampler), the pruning (median or Hyperband pruner fed the mask AP of each evaluation), the study
storage and the heartbeat that fails the trials of a worker that went away. maskinit adds what is
specific to it, one concept a module:

- `space`: the search space and the `--search KEY=...` specs;
- `study`: `tune()`, the trial loop (a trial ending mapped to a trial state, `trials` counted as
  finished trials of the whole study, every worker ending with the whole study);
- `storage`: SQLite, PostgreSQL/MySQL or a journal file, the heartbeat, dead trials failed and
  queued again;
- `workers`: `--workers N` processes on one machine, each on its GPU of the allocation;
- `report`: the table of trials, the best config (kept in the study) and the plots.

Nothing here prints: `tune` returns a `TuneResult`, the CLI shows it.
"""

from .report import (
    BEST_CONFIG,
    PLOT_DIR,
    TRIALS_FILE,
    TrialRow,
    TuneResult,
    best_config_text,
    retrain_command,
    study_report,
    trial_row,
    write_best_config,
    write_plots,
)
from .space import (
    CLIP_CHOICES,
    DEFAULT_DIMENSIONS,
    LR_RANGE,
    OPTIMIZERS,
    WARMUP_FRACTION,
    WD_RANGE,
    SearchDimension,
    SearchSpace,
    build_space,
    parse_search,
)
from .storage import (
    BASELINE,
    CONFIG,
    ERROR,
    FAILURE,
    GRACE_PERIOD,
    HOST,
    PID,
    POSTGRES_EXTRA,
    STUDY_FILE,
    SURPLUS,
    counted,
    create_or_load_study,
    database_url,
    fail_dead_trials,
    fail_stale_trials,
    journal_path,
    open_storage,
    retry_trial,
    shown_url,
    storage_url,
    study_name_for,
)
from .study import (
    CONSECUTIVE_FAILURES,
    DIVERGED_LOSS,
    METRIC,
    PRUNERS,
    SPLIT_DIR,
    TRIAL_DIR,
    StudyInterrupted,
    TrialFailed,
    _make_pruner,
    pruning_hook,
    sampler_seed,
    sampler_seed_for,
    trial_interruption,
    tune,
)
from .workers import _without_options, allocated_gpus, run_workers, worker_env, worker_place

__all__ = [
    "BASELINE", "BEST_CONFIG", "CLIP_CHOICES", "CONFIG", "CONSECUTIVE_FAILURES", "DEFAULT_DIMENSIONS", "DIVERGED_LOSS",
    "ERROR", "FAILURE", "GRACE_PERIOD", "HOST", "LR_RANGE", "METRIC", "OPTIMIZERS", "PID", "PLOT_DIR", "POSTGRES_EXTRA",
    "PRUNERS", "SPLIT_DIR", "STUDY_FILE", "SURPLUS", "TRIALS_FILE", "TRIAL_DIR", "WARMUP_FRACTION", "WD_RANGE",
    "SearchDimension", "SearchSpace", "StudyInterrupted", "TrialFailed", "TrialRow", "TuneResult", "_make_pruner",
    "_without_options", "allocated_gpus", "best_config_text", "build_space", "counted", "create_or_load_study",
    "database_url", "fail_dead_trials", "fail_stale_trials", "journal_path", "open_storage", "parse_search",
    "pruning_hook", "retrain_command", "retry_trial", "run_workers", "sampler_seed", "sampler_seed_for",
    "shown_url", "storage_url", "study_name_for", "study_report", "trial_interruption", "trial_row", "tune",
    "worker_env", "worker_place", "write_best_config", "write_plots",
]
