"""`maskinit tune`: search specs and their refusals, the default search space, a tiny study (table, best
config, plots), a pruned and a diverged trial, a killed study resumed, two worker processes on one SQLite
study, and the best config retrained by `maskinit train --config`. Trials are 4 iterations of the tiny
preset on the generated COCO set, evaluated every 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from maskinit.cli import app
from maskinit.config import config_value, load_config
from maskinit.errors import MaskinitError
from maskinit.run_options import TrainOptions, apply_run_options
from maskinit.tune import (
    HOST,
    PID,
    STUDY_FILE,
    SURPLUS,
    build_space,
    open_storage,
    parse_search,
    storage_url,
    tune,
)

# The module-scoped fixtures train once per test process: under `make test` (pytest-xdist) this module's tests
# run in one of them, except those marked for the "processes" group.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tune")]

runner = CliRunner()
TINY = (
    "--preset",
    "tiny",
    "--device",
    "cpu",
    "--max-iter",
    "4",
    "--eval-period",
    "2",
    "--ims-per-batch",
    "2",
    "--seed",
    "0",
)


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config(preset="tiny")


def data_args(coco) -> list[str]:
    return [
        "--train-json",
        coco.train_json,
        "--train-images",
        coco.train_images,
        "--val-json",
        coco.val_json,
        "--val-images",
        coco.val_images,
    ]


def tiny_options(coco, out: Path, **changes) -> TrainOptions:
    return TrainOptions(
        output_dir=str(out), max_iter=4, eval_period=2, ims_per_batch=2, device="cpu", seed=0, data=coco, **changes
    )


# ------------------------------------------------------------------------------------------ specs and space


def test_search_specs_parse_ranges_and_choices(tiny_cfg):
    lr = parse_search("SOLVER.BASE_LR=1e-4:1e-2:log", tiny_cfg)
    assert (lr.key, lr.low, lr.high, lr.log, lr.integer) == ("SOLVER.BASE_LR", 1e-4, 1e-2, True, False)
    warmup = parse_search("SOLVER.WARMUP_ITERS=0:100", tiny_cfg)  # an int key: integers without :int
    assert warmup.integer and not warmup.log
    assert parse_search("SOLVER.BASE_LR=1:8:log:int", tiny_cfg).integer
    assert parse_search("MASKINIT.OPTIMIZER=sgd,adamw", tiny_cfg).choices == ("sgd", "adamw")
    assert parse_search("SOLVER.WEIGHT_DECAY=0,1e-4", tiny_cfg).choices == (0.0, 1e-4)  # floats, as the key
    assert parse_search("SOLVER.CLIP_GRADIENTS.ENABLED=True,False", tiny_cfg).choices == (True, False)
    assert parse_search("MASKINIT.FIT=off,safe,full", tiny_cfg).choices == ("off", "safe", "full")  # the data fit


@pytest.mark.parametrize(
    "spec, message",
    [
        ("SOLVER.NO_SUCH_KEY=1:2", "unknown config key SOLVER.NO_SUCH_KEY"),
        ("SOLVER=1:2", "a section of the config"),
        ("SOLVER.BASE_LR", "expected KEY=low:high"),
        ("SOLVER.BASE_LR=", "expected KEY=low:high"),
        ("SOLVER.BASE_LR=0.1:0.01", "need finite low < high"),
        ("SOLVER.BASE_LR=0:0.1:log", "a log range needs low > 0"),
        ("SOLVER.BASE_LR=a:b", "low and high must be numbers"),
        ("SOLVER.BASE_LR=1e-3:1e-2:cube", "optionally :log and/or :int"),
        ("SOLVER.WARMUP_ITERS=0.5:10", "takes integers"),
        ("MASKINIT.OPTIMIZER=1:2", "not a number"),
        ("SOLVER.BASE_LR=fast,slow", "is not a float"),
        ("SOLVER.BASE_LR=0.1,0.1", "given twice"),
        # a value every trial drawing it would fail on, by the key's rule in check_config
        ("MASKINIT.FIT=off,most", r"unknown fit mode 'most' for MASKINIT.FIT \(known: off, safe, full\)"),
        ("MASKINIT.OPTIMIZER=sgd,lion", "unknown optimizer .lion."),
        ("SOLVER.BASE_LR=0:0.1", "SOLVER.BASE_LR must be a positive finite number, got 0.0"),
        ("MASKINIT.PRIOR_PROB=0.01,1.5", r"MASKINIT.PRIOR_PROB must be in \[0, 1\)"),
        ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=0:128", "must be at least 1, got 0"),
    ],
)
def test_bad_search_specs_are_refused_in_one_line(tiny_cfg, spec, message):
    with pytest.raises(MaskinitError, match=message) as error:
        parse_search(spec, tiny_cfg)
    assert "\n" not in str(error.value)


def test_default_space_is_conditional_on_the_optimizer_and_fixed_by_options(tiny_cfg):
    options = TrainOptions(max_iter=40)
    space = build_space(tiny_cfg, options)
    assert space.defaults == ("optimizer", "lr", "weight_decay", "warmup", "clip_grad")
    # the preset's optimizer (AdamW at 1e-3) gets its LR x/÷ 10; SGD its own range, 10-100x higher
    assert space.lr_range["adamw"] == pytest.approx((1e-4, 1e-2))
    assert space.lr_range["sgd"][0] >= 1e-3 and space.wd_range["sgd"][1] <= 1e-3 < space.wd_range["adamw"][1]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = study.ask()
        values = space.suggest(trial)
        low, high = space.lr_range[values["MASKINIT.OPTIMIZER"]]
        assert low <= values["SOLVER.BASE_LR"] <= high
        assert 0 <= values["SOLVER.WARMUP_ITERS"] <= 12  # at most 0.3 of 40 iterations
        study.tell(trial, 0.0)
    fixed = build_space(
        tiny_cfg,
        replace(options, optimizer="sgd", lr=0.02),
        ["SOLVER.WARMUP_ITERS=0:10"],
        explicit_keys={"SOLVER.WEIGHT_DECAY"},
    )
    assert fixed.defaults == ("clip_grad",) and [d.key for d in fixed.dimensions] == ["SOLVER.WARMUP_ITERS"]
    with pytest.raises(MaskinitError, match="nothing to search"):
        build_space(tiny_cfg, options, defaults=False)
    with pytest.raises(MaskinitError, match="given twice"):
        build_space(tiny_cfg, options, ["SOLVER.BASE_LR=0.1,0.2", "SOLVER.BASE_LR=1e-3:1e-2"])


def test_the_baseline_point_is_the_configs_own_values_where_the_space_holds_them(tiny_cfg):
    options = TrainOptions(max_iter=400)
    space = build_space(tiny_cfg, options)
    point = space.baseline(tiny_cfg)
    assert point == {
        "optimizer": "adamw",
        "lr_adamw": pytest.approx(tiny_cfg.SOLVER.BASE_LR),
        "weight_decay_adamw": pytest.approx(tiny_cfg.SOLVER.WEIGHT_DECAY),
        "warmup_fraction": pytest.approx(tiny_cfg.SOLVER.WARMUP_ITERS / 400),
        "clip_grad": tiny_cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE,
    }
    # the point suggests exactly the config's values
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(point)
    values = space.suggest(study.ask())
    assert values["SOLVER.BASE_LR"] == pytest.approx(tiny_cfg.SOLVER.BASE_LR)
    assert values["SOLVER.WARMUP_ITERS"] == tiny_cfg.SOLVER.WARMUP_ITERS
    assert values["SOLVER.CLIP_GRADIENTS.ENABLED"] and values["MASKINIT.OPTIMIZER"] == tiny_cfg.MASKINIT.OPTIMIZER
    # values the space cannot hold are left to the sampler: a clipping norm not among the choices, a
    # --search key outside its range; one inside its choices is kept
    odd = tiny_cfg.clone()
    odd.defrost()
    odd.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 3.0
    odd.SOLVER.WARMUP_ITERS = 300
    searched = build_space(
        odd,
        options,
        ["SOLVER.GAMMA=0.2:0.5", f"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=32,{odd.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE}"],
    )
    point = searched.baseline(odd)
    assert "clip_grad" not in point and "warmup_fraction" not in point and "SOLVER.GAMMA" not in point
    assert point["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] == odd.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE


def test_the_median_pruner_waits_for_half_the_run(tiny_cfg):
    from maskinit.tune import _make_pruner

    space = build_space(tiny_cfg, TrainOptions(max_iter=200))
    study = optuna.create_study(direction="maximize", pruner=_make_pruner("median", space, 50, trials=4))
    done = study.ask()
    for step, ap in ((50, 2.0), (100, 5.0), (150, 8.0)):
        done.report(ap, step)
    study.tell(done, 10.0)
    slow = study.ask()  # a slow starter: far below the finished trial at iteration 50, and still at 100
    slow.report(0.0, 50)
    assert not slow.should_prune()  # the first evaluation says how fast a trial starts: no pruning yet
    slow.report(0.5, 100)
    assert slow.should_prune()


def test_help_lists_tune_without_importing_optuna_or_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from maskinit.cli import app; "
        "out = CliRunner().invoke(app, ['--help']).output; assert 'tune' in out, out; "
        "print(sorted(m for m in ('optuna', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------ a study


@pytest.fixture(scope="module")
def study(coco, tiny_cfg, tmp_path_factory):
    """A 3-trial study of the default space, run in this process."""
    out = tmp_path_factory.mktemp("tune") / "study"
    options = tiny_options(coco, out)
    return tiny_cfg, options, tune(tiny_cfg, options, trials=3, pruner="none")


def test_a_study_runs_its_trials_and_writes_the_best_config_and_plots(study):
    cfg, options, result = study
    out = Path(options.output_dir)
    assert [row.number for row in result.trials] == [0, 1, 2] and result.ran_here == [0, 1, 2]
    assert all(row.state == "complete" and row.ap is not None and row.seconds > 0 for row in result.trials)
    for row in result.trials:  # an ordinary training run each, in its own folder
        assert Path(row.output_dir) == out / f"trial-{row.number:04d}"
        assert json.loads((Path(row.output_dir) / "run_summary.json").read_text())["status"] == "finished"
        assert {"optimizer", "warmup_fraction", "clip_grad"} <= set(row.params)
    assert (out / STUDY_FILE).is_file() and len(json.loads((out / "trials.json").read_text())) == 3
    assert result.best is not None and result.best_config == out / "best_config.yaml"
    # --keep-weights best (the default): the other finished trials' checkpoints are removed, their runs kept
    kept = [row.number for row in result.trials if list(Path(row.output_dir).glob("*.pth"))]
    assert kept == [result.best.number]
    assert (Path(result.best.output_dir) / "last_checkpoint").is_file()
    assert all(not (Path(row.output_dir) / "last_checkpoint").exists() and (Path(row.output_dir) / "log.txt").is_file()
               for row in result.trials if row.number != result.best.number)
    # trial 0 ran the preset's own values (with the study's run options); the sampler drew the others
    assert "the config's own values" in result.trials[0].note and all(
        "own values" not in row.note for row in result.trials[1:]
    )
    first = load_config(out / "trial-0000" / "config.yaml")
    plain = apply_run_options(cfg, options)  # what `maskinit train` with the same options runs: batch 2, 4 iterations
    keys = (
        "MASKINIT.OPTIMIZER",
        "SOLVER.BASE_LR",
        "SOLVER.WEIGHT_DECAY",
        "SOLVER.WARMUP_ITERS",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
    )
    assert plain.SOLVER.BASE_LR != cfg.SOLVER.BASE_LR  # the LR scaled with the batch: the baseline follows it
    assert {key: config_value(first, key) for key in keys} == pytest.approx(
        {key: config_value(plain, key) for key in keys}
    )
    best = load_config(result.best_config)
    assert best.TEST.EVAL_PERIOD == cfg.TEST.EVAL_PERIOD  # the pruning period is not kept
    trial_cfg = load_config(Path(result.best.output_dir) / "config.yaml")
    assert (best.SOLVER.BASE_LR, best.MASKINIT.OPTIMIZER) == (trial_cfg.SOLVER.BASE_LR, trial_cfg.MASKINIT.OPTIMIZER)
    assert "maskinit train --config" in result.retrain_command
    assert {path.name for path in result.plots} == {"optimization_history.png", "param_importances.png", "ap_vs_lr.png"}
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in result.plots)


def test_the_best_config_retrains_with_maskinit_train(study, coco, tmp_path):
    _, _, result = study
    command = [
        "train",
        "--config",
        str(result.best_config),
        "--max-iter",
        "2",
        "--output-dir",
        str(tmp_path / "best"),
        *data_args(coco),
    ]
    outcome = runner.invoke(app, command)
    assert outcome.exit_code == 0, outcome.output
    assert json.loads((tmp_path / "best" / "run_summary.json").read_text())["status"] == "finished"


def test_keep_weights_keeps_the_best_trials_all_or_none(tmp_path):
    import optuna
    from optuna.trial import TrialState, create_trial

    from maskinit.tune.study import drop_weights

    def study_with_trials():
        study = optuna.create_study(direction="maximize")
        for number, (state, value) in enumerate([(TrialState.COMPLETE, 5.0), (TrialState.COMPLETE, 9.0),
                                                  (TrialState.PRUNED, None), (TrialState.FAIL, None)]):
            folder = tmp_path / f"trial-{number:04d}"
            folder.mkdir(exist_ok=True)
            for name in ("model_final.pth", "model_0000001.pth", "last_checkpoint", "log.txt"):
                (folder / name).write_text(name)
            study.add_trial(create_trial(state=state, value=value, user_attrs={"output_dir": str(folder)}))
        return study

    def holding(name):
        return sorted(folder.name for folder in tmp_path.iterdir() if (folder / name).is_file())

    assert drop_weights(study_with_trials(), "all") == [] and len(holding("model_final.pth")) == 4
    removed = drop_weights(study_with_trials(), "best")
    assert len(removed) == 9 and holding("model_final.pth") == holding("last_checkpoint") == ["trial-0001"]
    assert holding("model_0000001.pth") == ["trial-0001"] and len(holding("log.txt")) == 4
    drop_weights(study_with_trials(), "none")
    assert holding("model_final.pth") == holding("last_checkpoint") == [] and len(holding("log.txt")) == 4


def test_an_unknown_keep_weights_is_refused_in_one_line(coco, tmp_path):
    done = subprocess.run([sys.executable, "-m", "maskinit", "tune", "--preset", "tiny", "--trials", "1",
                           "--keep-weights", "some", "--output-dir", str(tmp_path / "t"), *data_args(coco)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "error: --keep-weights must be one of best, all, none, got 'some'"), done.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test's own ask(), standing in for a killed worker
def test_a_killed_study_resumes_without_rerunning_finished_trials(study):
    cfg, options, _ = study
    out = Path(options.output_dir)
    with pytest.raises(MaskinitError, match="already holds a study.*--resume"):
        tune(cfg, options, trials=4)
    # a trial left running by a process that was killed (SIGKILL: no chance to record anything)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    optuna_study = optuna.load_study(study_name="maskinit", storage=open_storage(storage_url(out, None)))
    trial = optuna_study.ask()
    build_space(cfg, options).suggest(trial)
    trial.set_user_attr(HOST, __import__("socket").gethostname())
    trial.set_user_attr(PID, dead.pid)
    finished = {n: (out / f"trial-{n:04d}" / "run_summary.json").stat().st_mtime_ns for n in (0, 1, 2)}

    result = tune(cfg, options, trials=4, resume=True, pruner="none")
    states = {row.number: row for row in result.trials}
    assert states[3].state == "killed"
    assert result.ran_here == [4] and states[4].state == "complete" and "retry of trial 3" in states[4].note
    assert states[4].params == trial.params  # the killed trial's parameters, run again
    assert {n: (out / f"trial-{n:04d}" / "run_summary.json").stat().st_mtime_ns for n in (0, 1, 2)} == finished
    assert any("gone" in note for note in result.notes)
    params = [json.dumps(row.params, sort_keys=True) for row in result.trials if row.number != 4]
    assert len(set(params)) == len(params)  # no trial drew another's values
    # the study has its 4 counted trials: resuming again runs nothing
    assert tune(cfg, options, trials=4, resume=True, pruner="none").ran_here == []


def test_a_hopeless_trial_is_pruned_at_an_evaluation(coco, tiny_cfg, tmp_path):
    # a real pruner: any trial whose mask AP is below 50 at an evaluation is pruned (4 iterations reach ~0)
    options = tiny_options(coco, tmp_path / "pruned")
    result = tune(tiny_cfg, options, trials=1, pruner=optuna.pruners.ThresholdPruner(lower=50.0))
    [row] = result.trials
    assert row.state == "pruned" and "pruned at iteration 2" in row.note
    summary = json.loads((tmp_path / "pruned" / "trial-0000" / "run_summary.json").read_text())
    assert summary["status"] == "stopped" and summary["iterations"] <= 2
    assert result.best is None and any("no trial completed" in note for note in result.notes)


def test_a_diverged_trial_is_recorded_failed_and_the_study_goes_on(coco, tmp_path):
    out = tmp_path / "diverged"
    command = [
        "tune",
        *TINY,
        "--trials",
        "1",
        "--optimizer",
        "adamw",
        "--search",
        "SOLVER.BASE_LR=1000.0",
        "--search-only",
        "--output-dir",
        str(out),
        *data_args(coco),
    ]
    outcome = runner.invoke(app, command)
    assert outcome.exit_code == 1, outcome.output  # no trial completed: nothing to retrain
    assert "diverged" in outcome.output and "no trial completed" in outcome.output
    [row] = json.loads((out / "trials.json").read_text())
    assert row["state"] == "diverged" and "training diverged" in row["note"]


def test_no_baseline_leaves_the_first_trial_to_the_sampler(coco, tiny_cfg, tmp_path):
    out = tmp_path / "sampled"
    outcome = runner.invoke(
        app,
        [
            "tune",
            *TINY,
            "--trials",
            "1",
            "--pruner",
            "none",
            "--no-baseline",
            "--output-dir",
            str(out),
            *data_args(coco),
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    [row] = json.loads((out / "trials.json").read_text())
    assert row["state"] == "complete" and "own values" not in row["note"]
    baseline = build_space(tiny_cfg, tiny_options(coco, out)).baseline(
        apply_run_options(tiny_cfg, tiny_options(coco, out))
    )
    assert row["params"] != pytest.approx(baseline)


def test_a_study_searches_over_the_data_fit(coco, tiny_cfg, tmp_path):
    """`--search MASKINIT.FIT=...`: each trial fits the config to the data as its mode says (off: the preset's
    pixel statistics and sizes; safe: fitted ones), as `maskinit train --fit MODE` would."""
    configs = {}
    for mode in ("off", "safe"):
        out = tmp_path / mode
        outcome = runner.invoke(
            app,
            ["tune", *TINY, "--trials", "1", "--pruner", "none", "--search", f"MASKINIT.FIT={mode}", "--search-only",
             "--output-dir", str(out), *data_args(coco)],
        )
        assert outcome.exit_code == 0, outcome.output
        [row] = json.loads((out / "trials.json").read_text())
        assert row["state"] == "complete" and row["params"] == {"MASKINIT.FIT": mode}
        configs[mode] = load_config(out / "trial-0000" / "config.yaml")
        summary = json.loads((out / "trial-0000" / "run_summary.json").read_text())
        assert summary["fit"]["mode"] == mode and bool(summary["fitted_to_data"]) == (mode != "off")
    assert list(configs["off"].MODEL.PIXEL_MEAN) == list(tiny_cfg.MODEL.PIXEL_MEAN)
    assert list(configs["safe"].MODEL.PIXEL_MEAN) != list(tiny_cfg.MODEL.PIXEL_MEAN)


@pytest.mark.xdist_group("processes")
def test_two_worker_processes_share_one_sqlite_study(coco, tmp_path):
    out = tmp_path / "shared"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [
        sys.executable,
        "-m",
        "maskinit",
        "tune",
        *TINY,
        "--trials",
        "3",
        "--pruner",
        "none",
        "--workers",
        "1",
        "--storage",
        url,
        "--study-name",
        "shared",
        "--output-dir",
        str(out),
        *data_args(coco),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    trials = optuna.load_study(study_name="shared", storage=open_storage(url)).get_trials()
    # the last trial may start in both workers at once: the one that started second stands down unrun
    assert all(t.user_attrs.get(SURPLUS) for t in trials if t.state != optuna.trial.TrialState.COMPLETE)
    trials = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3
    assert {t.user_attrs[PID] for t in trials} == {worker.pid for worker in workers}  # both contributed
    folders = [t.user_attrs["output_dir"] for t in trials]
    assert len(set(folders)) == len(folders)
    for trial in trials:  # each folder holds its own trial's run, trained once
        folder = Path(trial.user_attrs["output_dir"])
        assert folder.name == f"trial-{trial.number:04d}"
        assert (folder / "log.txt").read_text().count("Starting training from iteration 0") == 1


# ------------------------------------------------------------------------------------------ --workers N


def test_worker_env_places_workers_on_gpus_in_turn_or_shares_the_cpu_cores():
    from maskinit.tune import worker_env, worker_place

    on_gpus = [worker_env(i, 3, "cuda", {"PATH": "/bin"}, gpus=2) for i in range(3)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in on_gpus] == ["0", "1", "0"]
    assert all(env["PATH"] == "/bin" and "OMP_NUM_THREADS" not in env for env in on_gpus)
    assert worker_place(on_gpus[1]) == "GPU 1"
    cpu = worker_env(0, 2, "cpu", {}, gpus=2)  # --device cpu: no GPU even where there are some
    assert "CUDA_VISIBLE_DEVICES" not in cpu
    assert cpu["OMP_NUM_THREADS"] == cpu["MKL_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert worker_place(cpu) == f"CPU, {cpu['OMP_NUM_THREADS']} thread(s)"
    assert worker_env(1, 64, None, {}, gpus=0)["OMP_NUM_THREADS"] == "1"  # auto device, no GPU: CPU, at least 1
    assert worker_env(0, 2, "cpu", {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"  # the user's setting wins


def test_worker_command_line_drops_the_launchers_own_options():
    from maskinit.tune import _without_options

    argv = ["tune", "--resume", "--workers", "4", "--storage=sqlite:///x.db", "--study-name", "s", "--lr", "0.1"]
    assert _without_options(argv, flags=("--resume",), valued=("--workers", "--storage", "--study-name")) == [
        "tune",
        "--lr",
        "0.1",
    ]


def test_workers_refusals_are_one_line(coco, tmp_path):
    outcome = runner.invoke(
        app, ["tune", *TINY, "--trials", "1", "--workers", "0", "--output-dir", str(tmp_path / "w0"), *data_args(coco)]
    )
    assert outcome.exit_code == 2 and "--workers 0: needs at least 1" in outcome.output
    assert "Traceback" not in outcome.output


@pytest.mark.xdist_group("processes")
def test_workers_launches_processes_that_share_one_study(coco, tmp_path):
    """`--workers 2` on CPU: two worker processes (an equal share of the cores each, or the user's
    OMP_NUM_THREADS) run the study's trials; the launcher then reports the whole study."""
    out = tmp_path / "launched"
    command = [
        sys.executable,
        "-m",
        "maskinit",
        "tune",
        *TINY,
        "--trials",
        "3",
        "--pruner",
        "none",
        "--workers",
        "2",
        "--output-dir",
        str(out),
        *data_args(coco),
    ]
    outcome = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    text = outcome.stdout + outcome.stderr
    assert outcome.returncode == 0, text[-3000:]
    assert "worker 0 (CPU, 1 thread(s))" in text and "worker 1 (CPU, 1 thread(s))" in text
    assert (out / "worker-0.log").is_file() and (out / "worker-1.log").is_file()
    trials = optuna.load_study(study_name="maskinit", storage=open_storage(storage_url(out, None))).get_trials()
    logs = "".join((out / f"worker-{i}.log").read_text()[-3000:] for i in range(2))
    assert all(t.user_attrs.get(SURPLUS) for t in trials if t.state != optuna.trial.TrialState.COMPLETE), (
        [(t.number, t.state.name, {k: v for k, v in t.user_attrs.items() if k != "config"}) for t in trials],
        logs,
    )
    started = len(trials)  # the complete ones and any that stood down
    trials = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3
    assert len({t.user_attrs[PID] for t in trials}) == 2  # both workers ran trials
    assert (out / "best_config.yaml").is_file() and "best: trial" in text
    rows = json.loads((out / "trials.json").read_text())
    assert len(rows) == len(trials)
    # the same command again without --resume: refused, the study kept
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds a study" in again.stdout + again.stderr
    assert (
        len(optuna.load_study(study_name="maskinit", storage=open_storage(storage_url(out, None))).get_trials())
        == started
    )


def test_ctrl_c_stops_the_study_in_one_line_and_resume_runs_the_trial_again(coco, tmp_path):
    out = tmp_path / "stopped"
    command = [
        sys.executable,
        "-m",
        "maskinit",
        "tune",
        "--trials",
        "1",
        "--output-dir",
        str(out),
        "--no-progress",
        *data_args(coco),
        *TINY[:-6],
        "--max-iter",
        "40",
        "--eval-period",
        "20",
        "--ims-per-batch",
        "2",
        "--seed",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "trial-0000" / "log.txt"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "Starting training from iteration" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr  # a signal's exit code, as a training run's (errors.EXIT_CODES)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    # the trial's own `maskinit train --resume` is not offered: the study's resume runs the trial again
    assert "interrupted by SIGINT" in lines[0] and "of trial 0" in lines[0], lines[0]
    assert "maskinit tune" in lines[0] and "--resume" in lines[0] and "maskinit train" not in lines[0]
    assert str(out / STUDY_FILE) in lines[0]
    stopped, queued = optuna.load_study(
        study_name="maskinit", storage=open_storage(storage_url(out, None))
    ).get_trials()
    assert stopped.state == optuna.trial.TrialState.FAIL and stopped.user_attrs.get("interrupted") is True
    assert queued.state == optuna.trial.TrialState.WAITING and queued.params == stopped.params  # queued for --resume

    # the same options with --resume: the interrupted trial's parameters run again
    resumed = tune(
        load_config(preset="tiny"), replace(tiny_options(coco, out), max_iter=40, eval_period=20), trials=1, resume=True
    )
    states = {row.number: row for row in resumed.trials}
    assert states[0].state == "interrupted" and states[1].state == "complete" and "retry of trial 0" in states[1].note
    assert states[1].params == states[0].params


def test_workers_racing_to_create_a_new_database_both_open_it(tmp_path, monkeypatch):
    """Two workers started together on a new database both create its tables
    (https://github.com/optuna/optuna/issues/1092); the one that loses the race gets "table ... already exists"
    and must open the storage again, not fail."""
    real = optuna.storages.RDBStorage
    calls = []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:  # the other worker created the tables between the check and the CREATE
            raise RuntimeError("(sqlite3.OperationalError) table study_directions already exists")
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    url = f"sqlite:///{tmp_path / 'raced.db'}"
    assert isinstance(open_storage(url), real) and len(calls) == 2
    calls.clear()

    def broken(url, **kwargs):
        calls.append(url)
        raise RuntimeError("(psycopg2.OperationalError) could not connect to server")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(MaskinitError, match="cannot open the study storage .*could not connect"):
        open_storage("postgresql://nowhere/db")
    assert len(calls) == 1  # any other error: one line at once, no retries


def test_val_fraction_scores_the_trials_on_held_back_training_images(coco, tiny_cfg, tmp_path):
    """--val-fraction: the trials train on part of the training images and are evaluated on the rest; the
    validation set given is never read by the search, and the retrain command names the user's data."""
    out = tmp_path / "held-back"
    outcome = runner.invoke(
        app,
        [
            "tune",
            *TINY,
            "--trials",
            "1",
            "--pruner",
            "none",
            "--val-fraction",
            "0.25",
            "--output-dir",
            str(out),
            *data_args(coco),
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "trials train on 6 of the 8 training images and are scored on the other 2" in " ".join(
        outcome.output.split()
    )
    [row] = json.loads((out / "trials.json").read_text())
    assert row["state"] == "complete"
    log = (out / "trial-0000" / "log.txt").read_text()
    assert (
        str(out / "split" / "0.25-seed0" / "held-back.json") in log
        and str(out / "split" / "0.25-seed0" / "train-part.json") in log
    )
    assert coco.val_json not in log
    held = json.loads((out / "split" / "0.25-seed0" / "held-back.json").read_text())
    assert len(held["images"]) == 2 and all(image["id"] < 100 for image in held["images"])  # training images
    assert f"--val-json {coco.val_json}" in " ".join(outcome.output.split())  # retrain: the user's own data
    # the split is part of what the study searched: resuming with another fraction is refused
    again = runner.invoke(
        app,
        [
            "tune",
            *TINY,
            "--trials",
            "2",
            "--val-fraction",
            "0.5",
            "--resume",
            "--output-dir",
            str(out),
            *data_args(coco),
        ],
    )
    assert again.exit_code == 2 and "val_fraction" in again.output
    assert (out / "split" / "0.25-seed0" / "held-back.json").read_text() == json.dumps(
        held
    )  # the study's split untouched
    # a fraction that cannot split is refused before any study exists
    bad = runner.invoke(
        app,
        [
            "tune",
            *TINY,
            "--trials",
            "1",
            "--val-fraction",
            "1.5",
            "--output-dir",
            str(tmp_path / "bad"),
            *data_args(coco),
        ],
    )
    assert bad.exit_code == 2 and "--val-fraction must be between 0 and 1" in bad.output
    assert not (tmp_path / "bad" / "study.db").exists()


def test_val_fraction_tunes_a_set_without_a_validation_split(coco, tmp_path):
    out = tmp_path / "no-val"
    train_only = ["--train-json", coco.train_json, "--train-images", coco.train_images]
    outcome = runner.invoke(
        app,
        [
            "tune",
            *TINY,
            "--trials",
            "1",
            "--pruner",
            "none",
            "--val-fraction",
            "0.25",
            "--output-dir",
            str(out),
            *train_only,
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    [row] = json.loads((out / "trials.json").read_text())
    assert row["state"] == "complete" and row["ap"] is not None  # scored on the 2 held-back training images
    assert (out / "best_config.yaml").is_file() and "--val-json" not in " ".join(outcome.output.split())
