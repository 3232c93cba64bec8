"""One MLflow name per number: the evaluate run and the register run log a metric under the same name."""
from __future__ import annotations

from facekd.mlops.model_registry import _flat_numbers
from facekd.mlops.tracking import metric_name


def test_register_and_evaluate_runs_name_a_metric_alike():
    tree = {"ijb": {"tar@far=1e-4": 0.5, "tar@far=1e-3": 0.7, "rank1": 0.9}, "lfw": {"acc": 0.99, "bad": float("nan")}}
    assert _flat_numbers(tree) == {"ijb.tar_at_far_1e-4": 0.5, "ijb.tar_at_far_1e-3": 0.7, "ijb.rank1": 0.9,
                                   "lfw.acc": 0.99}
    assert metric_name("ijb.tar@far=1e-4") == "ijb.tar_at_far_1e-4"
