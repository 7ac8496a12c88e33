"""Tuning's rules as fast unit checks (the slower end-to-end studies are in test_tuning.py):
finals on distinct seeds, never a trial past the budget, the pruner's decision obeyed."""
from __future__ import annotations

import optuna
import pytest

from benchmark import loop, tuning
from tests.conftest import compose


def test_finals_use_distinct_seeds_other_than_the_tuning_seed(tmp_path):
    job = compose("method=bp", "arch=mlp", "dataset=digits", "mode=tune", "seed=5", "tuning.n_seeds=4",
                  f"results_dir={tmp_path}", "measure.emissions=false")
    seeds = tuning.final_seeds(job)
    assert len(seeds) == 4 and len(set(seeds)) == 4 and 5 not in seeds


@pytest.mark.parametrize("n_trials", [1, 3])
def test_claims_stop_exactly_at_the_budget(n_trials):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    claimed = 0
    while (trial := tuning.claim_trial(study, n_trials, lock=None)) is not None:
        study.tell(trial, 0.5)
        claimed += 1
        assert claimed <= n_trials, "a trial was claimed past the budget"
    assert claimed == n_trials
    # and no trial past the budget was even asked for (then failed as over budget): the study
    # holds exactly the budget's trials.
    assert len(study.trials) == n_trials, [t.state.name for t in study.trials]


class FakeTrial:
    def __init__(self, prune: bool):
        self.prune, self.reported = prune, []

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return self.prune


@pytest.mark.parametrize("prune", [True, False])
def test_the_pruners_decision_stops_the_trial(prune, tmp_path):
    job = compose("method=bp", "arch=mlp", "dataset=digits", "mode=tune", f"results_dir={tmp_path}",
                  "measure.emissions=false")
    trial = FakeTrial(prune)
    on_epoch = tuning.epoch_callback(trial, job.tuning)
    record = {"epoch": 2, "val_accuracy": 0.4, "train_seconds_cum": 1.0, "energy_j_cum": 0.0}
    if prune:
        with pytest.raises(loop.Pruned):
            on_epoch(record)
    else:
        on_epoch(record)
    assert trial.reported == [(2, 0.4)]


def told_trial(study, val_accuracy: float, losses: list[float]) -> None:
    """A completed trial told from a record whose training loss went through `losses`."""
    trial = study.ask()
    history = [{"epoch": i + 1, "phase": "train", "train_loss": loss, "val_accuracy": val_accuracy}
                for i, loss in enumerate(losses)]
    record = {"run_id": f"r{trial.number}", "status": "completed",
              "metrics": {"val_accuracy": val_accuracy, "history": history, "epochs_run": len(losses)}}
    tuning.tell_from_record(study, trial.number, record)


def test_a_trial_whose_loss_climbed_is_ranked_below_every_stable_trial():
    """DFA at too high a rate scored the best validation accuracy of a 3-epoch probe with a loss of
    22,000 and rising: finals must not inherit such a setting while a stable one exists."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    told_trial(study, 0.80, [1.0, 0.6, 0.5])         # stable
    told_trial(study, 0.91, [4.6, 900.0, 22000.0])   # best on validation, loss exploding
    told_trial(study, 0.85, [2.0, 1.2, 0.9])         # stable, the best of those
    best = tuning.best_trial(study)
    assert best.number == 2 and tuning.stable(best)
    # two later epochs, fewer than the window: their median, the mean of 900 and 22,000
    assert study.trials[1].user_attrs["loss_rise"] == pytest.approx((900.0 + 22000.0) / 2 / 4.6)
    assert not tuning.stable(study.trials[1])


def test_unstable_trials_are_still_ranked_among_themselves_when_no_trial_is_stable():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    told_trial(study, 0.70, [1.0, 3.0])
    told_trial(study, 0.75, [1.0, 1.5])
    assert tuning.best_trial(study).number == 1


def test_a_trial_told_before_the_loss_check_existed_counts_as_stable():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    told_trial(study, 0.80, [1.0, 3.0])   # unstable
    old = study.ask()
    study.tell(old, 0.78)                 # no loss_rise attribute: a study from an earlier version
    assert tuning.best_trial(study).number == old.number
