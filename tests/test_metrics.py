import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from ecgshard import metrics


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 4)) < [0.3, 0.1, 0.5, 0.0]).astype(np.uint8)   # class 3: none
    scores = labels * rng.uniform(0.2, 1.0, labels.shape) + rng.normal(0, 0.4, labels.shape)
    return scores, labels


def test_per_class_matches_sklearn_and_skips_classes_without_positives(scored):
    scores, labels = scored
    auroc, ap = metrics.per_class(scores, labels)
    for c in range(3):
        assert auroc[c] == pytest.approx(roc_auc_score(labels[:, c], scores[:, c]))
        assert ap[c] == pytest.approx(average_precision_score(labels[:, c], scores[:, c]))
    assert np.isnan(auroc[3]) and np.isnan(ap[3])
    # the empty class is left out of the macro, not counted as 0 or 1
    assert metrics.macro(auroc) == pytest.approx(np.mean(auroc[:3]))


def test_threshold_metrics_match_sklearn(scored):
    scores, labels = scored
    sens, spec, f1 = metrics.at_threshold(scores, labels, 0.3)
    for c in range(3):
        pred = scores[:, c] >= 0.3
        assert f1[c] == pytest.approx(f1_score(labels[:, c], pred))
        assert sens[c] == pytest.approx(pred[labels[:, c] == 1].mean())
        assert spec[c] == pytest.approx((~pred)[labels[:, c] == 0].mean())
    assert np.isnan(sens[3]) and np.isnan(f1[3])


def test_youden_thresholds_separate_a_perfect_class():
    labels = np.array([[0], [0], [1], [1]])
    scores = np.array([[0.1], [0.2], [0.7], [0.9]])
    t = metrics.youden_threshold(scores, labels)[0]
    assert 0.2 < t <= 0.7
    assert 0.2 < metrics.pooled_youden_threshold(scores, labels) <= 0.7


def test_bootstrap_interval_brackets_the_estimate(scored):
    scores, labels = scored
    auroc, _ = metrics.per_class(scores, labels)
    boot = metrics.bootstrap_per_class(scores, labels, n_boot=200, seed=1)
    assert boot["auroc"].shape == (200, 4) and np.isnan(boot["auroc"][:, 3]).all()
    lo, hi = metrics.percentile_ci(metrics.macro_rows(boot["auroc"][:, :3]))
    assert lo < metrics.macro(auroc) < hi and hi - lo < 0.2
    # the macro's class set is fixed: a replicate missing one of its classes is no replicate
    assert np.isnan(metrics.macro_rows(boot["auroc"])).all()
    for c in range(3):
        lo, hi = metrics.percentile_ci(boot["auroc"][:, c])
        assert lo < auroc[c] < hi


def test_fast_per_class_equals_sklearn_with_ties(scored):
    scores, labels = scored
    rounded = np.round(scores, 1)                  # many ties
    for s in (scores, rounded):
        fast_auroc, fast_ap = metrics.per_class_fast(s, labels)
        auroc, ap = metrics.per_class(s, labels)
        np.testing.assert_allclose(fast_auroc, auroc, atol=1e-12)
        np.testing.assert_allclose(fast_ap, ap, atol=1e-12)


def test_patient_bootstrap_keeps_a_patients_records_together():
    """Ten patients with 20 identical ECGs each: resampling records pretends there are 200
    independent observations and narrows the interval; resampling patients does not."""
    rng = np.random.default_rng(3)
    base_labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    base_scores = base_labels * 0.3 + rng.normal(0, 0.5, 10)
    labels = np.repeat(base_labels, 20)[:, None]
    scores = np.repeat(base_scores, 20)[:, None]
    patients = np.repeat(np.arange(10), 20)
    by_record = metrics.bootstrap_per_class(scores, labels, 300, seed=0)["auroc"][:, 0]
    by_patient = metrics.bootstrap_per_class(scores, labels, 300, seed=0,
                                             groups=patients)["auroc"][:, 0]
    width = lambda b: np.subtract(*metrics.percentile_ci(b)[::-1])       # noqa: E731
    assert width(by_patient) > 2 * width(by_record)
    # a replicate draws whole patients: its record count is a multiple of 20
    one = metrics.bootstrap_per_class(scores, labels, 1, seed=5, groups=patients)
    assert np.isfinite(one["auroc"]).all() or np.isnan(one["auroc"]).all()


def test_permutation_null_sits_at_chance_and_places_a_real_signal(scored):
    scores, labels = scored
    cols = [0, 1, 2]
    null = metrics.permutation_null(scores[:, cols], labels[:, cols], n_perm=300, seed=0)
    assert abs(null.mean() - 0.5) < 0.02
    observed = metrics.macro(metrics.per_class(scores[:, cols], labels[:, cols])[0])
    pos = metrics.null_position(observed, null)
    assert pos["p"] == pytest.approx(1 / 301, abs=1e-6) and pos["percentile"] == 100.0
    assert metrics.null_position(0.5, null)["p"] > 0.2


def test_an_interval_of_a_few_usable_replicates_is_not_given():
    """Low group: two finite replicates of a thousand (resamples that happened to hold a
    positive) could exclude the point they bracket; no interval is the honest answer."""
    few = np.full(1000, np.nan)
    few[:2] = [0.91, 0.93]
    assert metrics.percentile_ci(few) is None
    half = np.where(np.arange(1000) % 2, np.nan, np.linspace(0.6, 0.8, 1000))
    assert metrics.percentile_ci(half) == pytest.approx([0.605, 0.795], abs=2e-3)
