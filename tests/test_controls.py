"""The class-specificity controls: a score that only says "abnormal" must not be called
class-specific, and one that follows each class's text must."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ecgshard import concepts, controls, metrics, zeroshot
from ecgshard.concepts import Status
from ecgshard.config import ZeroShotConfig

CLASSES = ["AMI", "LAFB/LPFB", "1AVB", "WPW", "LNGQT", "DIG"]
VOCAB = ["NORM", "SR"] + CLASSES


def _world(class_specific, n=600, dim=32, seed=0, normal_told=True):
    """Records that are normal (NORM + SR) or carry one abnormal class; embeddings with a
    shared "abnormal" direction u, plus each class's own direction v_c when
    ``class_specific``. Class texts are u + v_c; the normal text is -u, or with
    ``normal_told=False`` a direction the records do not vary along."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    u, v = basis[0], basis[1:1 + len(CLASSES)]
    # -1: normal, most records (as in PTB-XL, where NORM is about half)
    kind = np.where(rng.random(n) < 0.6, -1, rng.integers(0, len(CLASSES), n))
    labels_all = np.zeros((n, len(VOCAB)), np.uint8)
    labels_all[kind < 0, 0] = labels_all[kind < 0, 1] = 1
    labels_all[kind >= 0, 2 + kind[kind >= 0]] = 1
    emb = 0.4 * rng.normal(size=(n, dim))
    emb += np.outer(kind >= 0, u) * 1.0
    if class_specific:
        emb[kind >= 0] += 1.0 * v[kind[kind >= 0]]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    text = {"NORM": -u if normal_told else basis[-1], "SR": -u}
    for i, c in enumerate(CLASSES):
        t = u + v[i]
        text[c] = t / np.linalg.norm(t)
    return emb, labels_all, text


def _evaluate(class_specific, n=600, min_positives=10, normal_told=True):
    emb, labels_all, text = _world(class_specific, n=n, normal_told=normal_told)
    graph = concepts.load()
    labels = labels_all[:, 2:]
    scores = emb @ np.stack([text[c] for c in CLASSES]).T
    pool = controls.wrong_text_pool(VOCAB, graph)
    pool_scores = emb @ np.stack([text[c] for c in pool]).T
    against = {"pool": pool, "pool_scores": pool_scores, "normal_code": "NORM",
               "baselines": controls.abnormality_scores(-(emb @ text["NORM"]), pool_scores, None,
                                                        np.zeros(len(CLASSES), bool)),
               "normal": controls.normal_records(labels_all, VOCAB, graph),
               "source": np.full(len(labels), "one database"), "graph": graph}
    cfg = ZeroShotConfig(run="", shards="", text="", out="", bootstrap=50, control_seeds=0,
                         permutations=200, min_positives=min_positives)
    status = {c: Status("unseen", None, "test") for c in CLASSES}
    patients = np.arange(len(labels)).astype(str)
    return zeroshot._evaluate(scores, labels, CLASSES, status, {}, 0.0, cfg, patients, None,
                              against)


def test_cross_auroc_is_the_auroc_of_every_score_against_every_label():
    rng = np.random.default_rng(1)
    scores, labels = rng.normal(size=(80, 3)), rng.integers(0, 2, (80, 4))
    scores[:, 0] = np.round(scores[:, 0])                 # ties count half
    cross = metrics.cross_auroc(scores, labels)
    for s in range(3):
        for c in range(4):
            assert cross[s, c] == pytest.approx(roc_auc_score(labels[:, c], scores[:, s]))
    labels[:, 2] = 0
    assert np.isnan(metrics.cross_auroc(scores, labels)[:, 2]).all()


def test_an_abnormality_axis_alone_is_not_class_specific():
    classes, groups, _ = _evaluate(class_specific=False)
    g = groups["unseen"]
    assert g["macro_auroc"] > 0.7                         # looks like zero-shot success ...
    assert g["distinguishable_from_nulls"]                # ... and beats label permutation
    assert not g["class_specific"] and g["wrong_text"]["p"] > 0.05
    assert g["abnormality_baseline"]["margin_ci"][0] < 0     # the axis does as well
    assert abs(g["within_abnormal"]["macro_auroc"] - 0.5) < 0.1
    assert "NOT class-specific" in g["verdict"]
    assert np.mean(g["wrong_text"]["own_rank"]) > 2
    # above the permutation null, yet no zero-shot claim: two counterfactuals fake it
    assert controls.unbeaten(g) == ["the wrong-text null", "the class-agnostic abnormality score"]
    assert g["zero_shot_claim"] is False
    assert g["verdict"].endswith("; no zero-shot claim: not above the wrong-text null or the "
                                 "class-agnostic abnormality score")


def test_a_score_that_follows_the_text_is_class_specific():
    classes, groups, replicates = _evaluate(class_specific=True)
    g = groups["unseen"]
    assert g["class_specific"] and g["wrong_text"]["p"] < 0.01
    assert all(r == 1 for r in g["wrong_text"]["own_rank"])
    assert g["abnormality_baseline"]["margin_ci"][0] > 0
    assert g["within_abnormal"]["macro_auroc"] > 0.8
    assert g["within_abnormal"]["abnormality_macro_auroc"] < 0.65
    assert g["verdict"].startswith("class-specific")
    assert g["zero_shot_claim"] is True and controls.unbeaten(g) == []
    assert g["verdict"].endswith("; zero-shot claim: above all three counterfactuals")
    # a +1-corrected p of 1/10,001 is not printed as "0.000"
    assert g["wrong_text"]["p"] < 0.001 and "(p < 0.001)" in g["verdict"]
    assert replicates["auroc"].shape == replicates["baseline_auroc"].shape == (50, len(CLASSES))
    # each class's wrong texts exclude its own concept and the normal texts
    for c in classes:
        assert c["code"] not in c["wrong_text"]["aurocs"]
        assert not {"NORM", "SR"} & set(c["wrong_text"]["aurocs"])
        assert c["wrong_text"]["n_texts"] == len(CLASSES)


def test_a_zero_shot_claim_needs_every_counterfactual_beaten_and_formed():
    """Class-specific is not enough: a margin whose interval reaches zero withholds the claim,
    and a control that was not formed leaves it unjudged rather than granted."""
    group = {"distinguishable_from_nulls": True, "class_specific": True,
             "wrong_text": {"p": 0.0001},
             "abnormality_baseline": {"margin": 0.026, "margin_ci": [-0.017, 0.079]}}
    assert controls.unbeaten(group) == ["the class-agnostic abnormality score"]
    assert controls.zero_shot_claim(group) is False
    assert controls.verdict(group) == (
        "class-specific: beats the wrong-text null (p < 0.001); +0.026 over the class-agnostic "
        "abnormality score [-0.017, +0.079] (not above it); no zero-shot claim: not above the "
        "class-agnostic abnormality score")
    group["abnormality_baseline"]["margin_ci"] = [0.02, 0.12]
    assert controls.zero_shot_claim(group) is True
    # the same figures over classes that were trained (or have a trained relative) claim nothing
    assert controls.zero_shot_claim(group, unseen=False) is False
    assert controls.verdict(group, unseen=False).endswith(
        "; not a zero-shot figure: it has seen or related classes")
    group["distinguishable_from_nulls"] = False
    assert controls.unbeaten(group) == ["the untrained encoders"]
    # one control beaten the wrong way decides, whatever another lacks
    assert controls.zero_shot_claim({**group, "class_specific": None}) is False
    group["distinguishable_from_nulls"] = True
    for missing in ({"distinguishable_from_nulls": None}, {"class_specific": None},
                    {"abnormality_baseline": {"margin": 0.05, "margin_ci": None}}):
        assert controls.zero_shot_claim({**group, **missing}) is None
        assert controls.verdict({**group, **missing}).endswith(
            "; zero-shot claim not judged: a control was not formed")


def test_an_abnormality_axis_the_normal_text_misses_is_still_a_baseline():
    """A normal text the encoder did not learn (here: a direction the records do not vary
    along) makes "minus its cosine" a chance baseline, and a margin over it alone would call
    an abnormality axis class-specific. The record's mean over the wrong texts reads the axis
    without any normal text, and each class is held to the stronger of the two."""
    classes, groups, _ = _evaluate(class_specific=False, normal_told=False)
    base = groups["unseen"]["abnormality_baseline"]
    assert base["chosen"] == {"minus_normal_text": 0, "mean_over_texts": len(CLASSES)}
    # held to the normal text alone, the axis would seem to lead it by a wide margin
    assert abs(base["candidates_macro_auroc"]["minus_normal_text"] - 0.5) < 0.1
    assert groups["unseen"]["macro_auroc"] > 0.7
    assert base["margin_ci"][0] < 0
    for c in classes:
        assert c["abnormality_auroc"] == max(c["abnormality_candidates"].values())
    # with the normal text the axis's own direction too, the baseline (each class's stronger
    # candidate) is never below either candidate's macro
    classes, groups, _ = _evaluate(class_specific=False)
    base = groups["unseen"]["abnormality_baseline"]
    assert base["macro_auroc"] >= max(base["candidates_macro_auroc"].values())


def test_the_mean_over_the_texts_is_read_as_the_class_is_read():
    pool = np.array([[1.0, 3.0], [0.0, 2.0]])
    through = np.array([[5.0, 7.0], [4.0, 4.0]])
    out = controls.abnormality_scores(None, pool, through, np.array([True, False]))
    assert list(out) == ["mean_over_texts"]
    np.testing.assert_allclose(out["mean_over_texts"], [[6.0, 2.0], [4.0, 1.0]])
    normal = controls.abnormality_scores(np.array([0.5, -0.5]), pool, None,
                                         np.array([True, False]))
    np.testing.assert_allclose(normal["minus_normal_text"], [[0.5, 0.5], [-0.5, -0.5]])
    np.testing.assert_allclose(normal["mean_over_texts"], [[2.0, 2.0], [1.0, 1.0]])


def test_normal_records_without_a_normal_statement_are_sinus_rhythm_alone():
    graph = concepts.load()
    codes = ["426783006", "164889003", "713427006"]       # sinus rhythm, AF, RBBB (SNOMED)
    labels = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0], [0, 0, 0]])
    assert controls.normal_records(labels, codes, graph).tolist() == [True, False, False, False]
    with_norm = np.array([[1, 0], [0, 1], [1, 1]])
    assert controls.normal_records(with_norm, ["NORM", "LVOLT"], graph).tolist() == \
        [True, False, True]
    assert controls.normal_text_code(["AFIB", "426783006", "NORM"], graph) == "NORM"
    assert controls.normal_text_code(["AFIB", "426783006"], graph) == "426783006"
    assert controls.normal_text_code(["AFIB"], graph) is None


def test_intervals_below_the_macro_minimum_are_not_shown():
    classes, _, _ = _evaluate(class_specific=True, n=250, min_positives=18)
    below = [c for c in classes if c["n_pos"] < 18]
    assert below and len(below) < len(classes)
    for c in classes:
        assert (c["auroc_ci"] is None) == (c["n_pos"] < 18) and c["auroc"] is not None


def test_a_label_one_source_carries_is_scored_within_that_source():
    """A score that only tells source A from source B looks perfect for a label A alone
    carries; among A's records it is at chance."""
    rng = np.random.default_rng(3)
    sources = np.array(["A"] * 200 + ["B"] * 200)
    labels = np.zeros((400, 2), np.uint8)
    labels[rng.choice(200, 40, replace=False), 0] = 1              # only A carries class 0
    labels[rng.choice(400, 60, replace=False), 1] = 1              # both carry class 1
    scores = np.stack([(sources == "A") + 0.01 * rng.normal(size=400),
                       rng.normal(size=400)], axis=1)
    pooled = metrics.per_class(scores, labels)[0]
    within, carriers = controls.within_source(scores, labels, sources)
    assert pooled[0] > 0.75 and abs(within[0] - 0.5) < 0.15
    assert carriers == [["A"], ["A", "B"]]
    assert within[1] == pytest.approx(pooled[1])
