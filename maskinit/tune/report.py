"""The outputs of a study: the table of trials, the best trial's config and the plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MaskinitError, one_line
from .space import SearchSpace, build_space
from .storage import (
    BASELINE,
    CONFIG,
    ERROR,
    FAILURE,
    GRACE_PERIOD,
    SURPLUS,
    open_storage,
    shown_url,
    storage_url,
    study_name_for,
)

if TYPE_CHECKING:
    from detectron2.config import CfgNode

    from ..run_options import TrainOptions

BEST_CONFIG = "best_config.yaml"
TRIALS_FILE = "trials.json"
PLOT_DIR = "plots"


# ---------------------------------------------------------------------------------------------- results


@dataclass
class TrialRow:
    number: int
    state: str  # complete, pruned, diverged, failed, interrupted, killed, running, waiting
    ap: float | None
    params: dict
    seconds: float | None
    iterations: int | None
    note: str = ""
    output_dir: str | None = None


@dataclass
class TuneResult:
    study_name: str
    storage: str
    output_dir: Path
    trials: list[TrialRow]
    best: TrialRow | None
    best_config: Path | None
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    space: list[str] = field(default_factory=list)
    retrain_command: str | None = None
    ran_here: list[int] = field(default_factory=list)


def trial_row(trial) -> TrialRow:
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    state = trial.state.name.lower()
    if trial.state == TrialState.FAIL:
        state = attrs.get(FAILURE) or ("interrupted" if attrs.get("interrupted") else "killed")
    note = attrs.get(ERROR) or attrs.get("pruned") or ""
    if attrs.get(BASELINE):
        note = "the config's own values" + ("; " + note if note else "")
    if trial.system_attrs.get("failed_trial") is not None:
        note = (note + "; " if note else "") + f"retry of trial {trial.system_attrs['retry_history'][-1]}"
    ap = trial.value if trial.state == TrialState.COMPLETE else attrs.get("last_ap")
    return TrialRow(trial.number, state, ap, dict(trial.params), attrs.get("seconds"), attrs.get("iterations"), note,
                    attrs.get("output_dir"))



def study_report(cfg: CfgNode, options: TrainOptions, search: Sequence[str] = (), *, explicit_keys=frozenset(),
                 storage: str | None = None, study_name: str | None = None, default_space: bool = True,
                 grace_period: int = GRACE_PERIOD, **_tune_options) -> TuneResult:
    """The outputs of a study as it stands (after workers elsewhere ran its trials): the table, the
    best config and the plots, as `tune` returns them."""
    import optuna

    out = Path(options.output_dir)
    url = storage_url(out, storage)
    name = study_name_for(out, storage, study_name)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, grace_period))
    except KeyError as error:
        raise MaskinitError(f"no study {name!r} in {shown_url(url)}") from error
    space = build_space(cfg, options, search, explicit_keys, defaults=default_space)
    return report(study, shown_url(url), out, cfg, options, space, [], [])


def report(study, shown: str, out: Path, cfg: CfgNode, options: TrainOptions, space: SearchSpace, notes: list,
           ran_here: list) -> TuneResult:
    """The table of the study's trials (trials.json), its best config and plots, written to `out`."""
    from optuna.trial import TrialState

    from ..atomic import write_atomically

    rows = [trial_row(t) for t in study.get_trials(deepcopy=False) if SURPLUS not in t.user_attrs]
    result = TuneResult(study.study_name, shown, out, rows, None, None, notes=notes, space=space.describe(),
                        ran_here=ran_here)
    try:
        write_atomically(out / TRIALS_FILE, json.dumps([row.__dict__ for row in rows], indent=2, default=str))
    except OSError as error:
        raise MaskinitError(f"cannot write {out / TRIALS_FILE}: {error.strerror}") from error
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        result.best = trial_row(best)
        result.best_config = write_best_config(best, out, cfg, study.study_name)
        result.retrain_command = retrain_command(result.best_config, options)
    else:
        notes.append("no trial completed: no best config")
    result.plots, plot_notes = write_plots(study, out / PLOT_DIR)
    notes += plot_notes
    return result


def best_config_text(source: Path, base_cfg: CfgNode) -> str:
    """A trial's `config.yaml` as a best config: its evaluation period set back to the config's own (the
    trials evaluated for pruning). Kept in the study with the trial (`CONFIG`), so that any worker
    writes the best config, on any machine."""
    import yaml

    try:
        data = yaml.safe_load(source.read_text())
    except OSError as error:
        raise MaskinitError(f"cannot read the trial's config {source}: {error.strerror}") from error
    data.setdefault("TEST", {})["EVAL_PERIOD"] = base_cfg.TEST.EVAL_PERIOD
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True)


def write_best_config(best, out: Path, base_cfg: CfgNode, study_name: str = "maskinit") -> Path:
    """The best trial's config as `<out>/best_config.yaml`, ready for `maskinit train --config`: the text
    the study keeps with the trial (a trial without it: its folder's config.yaml), under
    a header naming the trial. The same bytes from every worker of the study."""
    from ..atomic import write_atomically

    text = best.user_attrs.get(CONFIG)
    if text is None:
        text = best_config_text(Path(best.user_attrs["output_dir"]) / "config.yaml", base_cfg)
    header = (f"# maskinit tune: best trial {best.number} of study {study_name} (mask AP {best.value:.2f}); "
              f"retrain with maskinit train --config {BEST_CONFIG}\n")
    path = out / BEST_CONFIG
    try:
        write_atomically(path, header + text)
    except OSError as error:
        raise MaskinitError(f"cannot write {path}: {error.strerror}") from error
    return path


def retrain_command(config: Path, options: TrainOptions) -> str:
    import shlex

    parts = ["maskinit", "train", "--config", str(config), "--output-dir", str(Path(options.output_dir) / "best"),
             *options.data.as_flags()]
    return " ".join(shlex.quote(part) for part in parts)


# ---------------------------------------------------------------------------------------------- plots


def _save(plot, path: Path) -> Path:
    """A matplotlib figure (or the axes Optuna's plots return) as a PNG, written atomically."""
    import io

    import matplotlib.pyplot as plt

    from ..atomic import write_atomically

    figure = plot if hasattr(plot, "savefig") else plot.figure
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_atomically(path, buffer.getvalue())


def write_plots(study, folder: Path) -> tuple[list[Path], list[str]]:
    """Optimization history, parameter importances (>= 2 complete trials) and mask AP against LR, as PNG."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    paths, notes = [], []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return paths, ["no plots: no trial completed"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            paths.append(_save(optuna.visualization.matplotlib.plot_optimization_history(study, target_name="mask AP"),
                               folder / "optimization_history.png"))
        except Exception as error:  # a plot is a side output: say why it is missing, keep the results
            notes.append(f"no optimization history plot: {one_line(error)}")
        if len(complete) >= 2:
            try:
                paths.append(_save(optuna.visualization.matplotlib.plot_param_importances(study, target_name="mask AP"),
                                   folder / "param_importances.png"))
            except Exception as error:
                notes.append(f"no parameter importance plot: {one_line(error)}")
        else:
            notes.append("no parameter importance plot: it needs at least 2 complete trials")
    def lr_of(trial):
        return next((v for k, v in trial.params.items() if k == "SOLVER.BASE_LR" or k.startswith("lr_")), None)

    points = [(t, lr_of(t)) for t in complete]
    points = [(t, lr) for t, lr in points if lr is not None]
    if points:
        figure, axes = plt.subplots(figsize=(6, 4))
        groups: dict[str, list] = {}
        for t, lr in points:
            groups.setdefault(t.params.get("optimizer", ""), []).append((lr, t.value))
        for optimizer, pairs in sorted(groups.items()):
            axes.scatter([p[0] for p in pairs], [p[1] for p in pairs], label=optimizer or None)
        axes.set_xscale("log")
        axes.set_xlabel("base LR")
        axes.set_ylabel("mask AP")
        axes.set_title("mask AP against LR (complete trials)")
        if len(groups) > 1 or next(iter(groups)):
            axes.legend(title="optimizer")
        paths.append(_save(figure, folder / "ap_vs_lr.png"))
    else:
        notes.append("no AP-against-LR plot: the LR is not searched")
    return paths, notes
