"""The oracle-free choice of epoch (rklu_llm.eval.stopping): the rule on hand-built per-epoch values, the signal on
hand-worked samples, and the unlearn recipe following it on a tiny model (rows per epoch, the chosen epoch kept,
training stopped there); bad settings and missing holdout data refused before any model is loaded."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from rklu_llm.data import DataUnavailableError
from rklu_llm.eval.stopping import FORGET_NLL, HOLDOUT_NLL, SIGNAL, first_peak, holdout_signal, select_epoch

REPO = Path(__file__).resolve().parents[1]


def rows(p, utility=None):
    return [{SIGNAL: v, "model_utility": None if utility is None else utility[i]} for i, v in enumerate(p)]


@pytest.mark.parametrize(
    "p,utility,floor,want",
    [
        ([0.001, 0.02, 0.3, 0.6, 0.01], None, None, 2),  # the first epoch at p >= 0.05, not the highest p
        ([0.001, 0.02, 0.3, 0.6, 0.01], [0.5, 0.5, 0.3, 0.45, 0.5], 0.4, 3),  # epoch 2 is below the utility floor
        ([0.001, 0.03, 0.02], None, None, 1),  # never reached: the highest p
        ([0.01, 0.03, 0.03], None, None, 1),  # ... the earliest of equal ones
        ([0.2, 0.3], [0.1, 0.2], 0.5, None),  # no epoch at the floor: nothing to keep
        ([None, 0.06], None, None, 1),  # an epoch without the signal is never chosen
    ],
)
def test_rule_on_hand_built_epochs(p, utility, floor, want):
    assert select_epoch(rows(p, utility), min_p=0.05, min_model_utility=floor) == want


@pytest.mark.parametrize("min_p,floor,message", [(0.0, None, "holdout_min_p"), (0.05, 1.5, "min_model_utility")])
def test_rule_settings_are_checked(min_p, floor, message):
    with pytest.raises(ValueError, match=message):
        select_epoch(rows([0.1]), min_p=min_p, min_model_utility=floor)


@pytest.mark.parametrize(
    "values,want",
    [
        ([0.01, 0.03, 0.02, 0.5, 0.9], 1),  # the first peak, not the highest value
        ([0.01, 0.03, 0.03, 0.5], 3),  # a plateau followed by a rise is not a peak
        ([0.01, 0.03, 0.03, 0.02, 0.5], 1),  # a plateau followed by a fall is: its first epoch
        ([0.1, 0.1, 0.3, 0.3, 0.3], 2),  # rising through plateaus to the end: the last plateau's first epoch
        ([0.01, 0.02, 0.4], 2),  # only rising: the last epoch
        ([0.3, 0.1, 0.2], 0),  # falling from the start: the first epoch
        ([None, 0.02, None, 0.01], 1),  # epochs without a value are skipped
        ([0.5], 0),
        ([None, None], None),
        ([], None),
    ],
)
def test_first_peak_on_hand_built_epochs(values, want):
    assert first_peak(values) == want


def test_signal_by_hand():
    # the same sample twice: KS D = 0, p = 1; AUC 0.5 (every pair a tie)
    same = holdout_signal([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same[SIGNAL] == pytest.approx(1.0) and same["holdout_auc_loss"] == pytest.approx(0.5)
    # forget losses all below the holdout ones (5 + 5 items): D = 1, exact two-sided p = 2 / C(10, 5) = 2 / 252;
    # every holdout item scores higher than every forget item: AUC 1
    apart = holdout_signal([0.1, 0.2, 0.3, 0.4, 0.5], [1.1, 1.2, 1.3, 1.4, 1.5])
    assert apart[SIGNAL] == pytest.approx(2 / 252) and apart["holdout_auc_loss"] == 1.0
    assert apart[FORGET_NLL] == pytest.approx(0.3) and apart[HOLDOUT_NLL] == pytest.approx(1.3)  # the two means
    with pytest.raises(ValueError, match="at least one"):
        holdout_signal([], [1.0])


FAST = [
    "--use_cpu",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--save_strategy",
    "no",
    "--max_length",
    "256",
    "--per_device_train_batch_size",
    "20",
    "--num_train_epochs",
    "3",
    "--learning_rate",
    "1e-3",
    "--method",
    "ga",
    "--eval_max_items",
    "10",
    "--max_new_tokens",
    "4",
    "--eval_batch_size",
    "10",
    "--skip_eval",
    "false",
]


def run_recipe(monkeypatch, argv):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [str(REPO / "recipes" / "tofu_forget01.py"), *argv])
    runpy.run_path(str(REPO / "recipes" / "tofu_forget01.py"), run_name="__main__")


@pytest.mark.slow
@pytest.mark.parametrize("stop_early", [False, True])
def test_recipe_keeps_the_rules_epoch_without_an_oracle(tmp_path, tiny_model_dir, tofu_dir, monkeypatch, stop_early):
    out = tmp_path / "ga"
    argv = ["--model", str(tiny_model_dir), "--data_dir", str(tofu_dir), "--output_dir", str(out), *FAST]
    argv += ["--eval_every_epoch", "--select_epoch_by", "holdout", "--best_checkpoint"]
    run_recipe(monkeypatch, argv + (["--stop_early"] if stop_early else []))
    record = json.loads((out / "tofu_eval_epochs.json").read_text())
    epochs = record["epochs"]
    assert all(0 <= row[SIGNAL] <= 1 and 0 <= row["holdout_auc_loss"] <= 1 for row in epochs)
    index = select_epoch(epochs, min_p=0.05)
    assert record["selected_epoch"] == epochs[index]["epoch"] and record["rule"]["holdout_split"] == "holdout01"
    assert record["selected"]["epoch"] == record["selected_epoch"] and record["selected"]["model_utility"] is not None
    kept = json.loads((out / "selected_epoch" / "selected_epoch.json").read_text())
    assert kept["row"]["epoch"] == record["selected_epoch"] and (out / "selected_epoch" / "model.safetensors").is_file()
    assert record["peak_epoch"] is None  # no oracle given: forget quality is not known
    reached = epochs[index][SIGNAL] >= 0.05
    if stop_early and reached:
        assert len(epochs) == index + 1  # training stopped at the rule's epoch
    else:
        assert len(epochs) == 3


@pytest.mark.parametrize(
    "extra,error,message",
    [
        (["--select_epoch_by", "holdout"], ValueError, "add --eval_every_epoch"),
        (["--eval_every_epoch", "--stop_early"], ValueError, "add --select_epoch_by holdout"),
        (["--eval_every_epoch", "--select_epoch_by", "holdout", "--holdout_min_p", "0"], ValueError, "holdout_min_p"),
        (["--eval_every_epoch", "--select_epoch_by", "oracle"], ValueError, "must be one of"),
        (
            ["--eval_every_epoch", "--select_epoch_by", "holdout", "--min_model_utility", "1.5"],
            ValueError,
            "min_model_utility",
        ),
    ],
)
def test_bad_rule_settings_fail_before_loading(tmp_path, tiny_model_dir, tofu_dir, monkeypatch, extra, error, message):
    import rklu_llm.scripts.unlearn as unlearn

    monkeypatch.setattr(unlearn, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = ["--model", str(tiny_model_dir), "--data_dir", str(tofu_dir), "--output_dir", str(tmp_path / "o"), *FAST]
    with pytest.raises(error, match=message):
        run_recipe(monkeypatch, argv + extra)
    assert not (tmp_path / "o").exists()


def test_missing_holdout_data_fails_before_loading(tmp_path, tiny_model_dir, tofu_dir, monkeypatch):
    import rklu_llm.scripts.unlearn as unlearn

    data = tmp_path / "tofu"  # every TOFU file but the holdout sets
    data.mkdir()
    for path in tofu_dir.iterdir():
        if not path.name.startswith("holdout"):
            (data / path.name).symlink_to(path)
    monkeypatch.setattr(unlearn, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = ["--model", str(tiny_model_dir), "--data_dir", str(data), "--output_dir", str(tmp_path / "o"), *FAST]
    with pytest.raises(DataUnavailableError, match="holdout01"):
        run_recipe(monkeypatch, [*argv, "--eval_every_epoch", "--select_epoch_by", "holdout"])
