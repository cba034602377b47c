import math

import numpy as np
import torch
import torch.nn.functional as F

from ecgshard.losses import (LOSSES, FindingsSigmoidLoss, MultiLabelCLIPLoss, SigmoidLoss,
                             TextSmoothedCLIPLoss, TripletLoss, build_loss)

ECG = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]]), dim=1)
TEXT = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]]), dim=1)
Y = torch.tensor([[1, 0, 0], [1, 1, 0]])
SIM = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.48]])     # ECG @ TEXT.T by hand


def _logsig(x):
    return -math.log1p(math.exp(-x))


SCALE, BIAS = torch.tensor(10.0), torch.tensor(-2.0)


def test_sigmoid_loss_by_hand():
    got = SigmoidLoss()(ECG, TEXT, Y, SCALE, BIAS).item()
    y = Y.numpy()
    want = -sum(_logsig((2 * y[i, c] - 1) * (10 * SIM[i, c] - 2))
                for i in range(2) for c in range(3)) / 2
    assert math.isclose(got, want, rel_tol=1e-5)


def test_multilabel_clip_loss_by_hand():
    got = MultiLabelCLIPLoss()(ECG, TEXT, Y, SCALE).item()
    logits = 10 * SIM
    lsm_rows = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    e2t = np.mean([-lsm_rows[0, 0], -(lsm_rows[1, 0] + lsm_rows[1, 1]) / 2])
    lsm_cols = logits - np.log(np.exp(logits).sum(0, keepdims=True))
    # classes 0 and 1 have positives; class 2 has none and contributes nothing
    t2e = np.mean([-(lsm_cols[0, 0] + lsm_cols[1, 0]) / 2, -lsm_cols[1, 1]])
    assert math.isclose(got, (e2t + t2e) / 2, rel_tol=1e-5)


def test_clip_loss_with_one_label_per_row_is_plain_clip():
    ecg = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    text = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    logits = 5.0 * ecg @ text.T
    target = torch.arange(4)
    plain = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert torch.allclose(MultiLabelCLIPLoss()(ecg, text, torch.eye(4), torch.tensor(5.0)),
                          plain, atol=1e-6)


def test_text_smoothed_clip_loss_by_hand():
    got = TextSmoothedCLIPLoss(alpha=0.3, tau=0.5)(ECG, TEXT, Y, SCALE).item()
    text = TEXT.numpy()
    neighbours = np.exp(text @ text.T / 0.5)
    neighbours /= neighbours.sum(1, keepdims=True)
    y_hat = Y.numpy() / Y.numpy().sum(1, keepdims=True)
    target = 0.7 * y_hat + 0.3 * y_hat @ neighbours
    logits = 10 * SIM
    lsm_rows = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    e2t = -(target * lsm_rows).sum(1).mean()
    lsm_cols = logits - np.log(np.exp(logits).sum(0, keepdims=True))
    t2e = np.mean([-(lsm_cols[0, 0] + lsm_cols[1, 0]) / 2, -lsm_cols[1, 1]])
    assert math.isclose(got, (e2t + t2e) / 2, rel_tol=1e-5)


def test_text_smoothing_moves_the_embedding_towards_the_labels_textual_neighbours():
    # Record labelled with class 1 only; class 2's text is near class 1's, class 0's is not.
    ecg = F.normalize(torch.tensor([[0.3, 1.0, 0.0]]), dim=1).requires_grad_()
    y = torch.tensor([[0, 1, 0]])
    TextSmoothedCLIPLoss(alpha=0.5, tau=0.1)(ecg, TEXT, y, SCALE).backward()
    soft = -ecg.grad.clone()
    ecg.grad = None
    MultiLabelCLIPLoss()(ecg, TEXT, y, SCALE).backward()
    hard = -ecg.grad
    # descent direction's pull towards class 2's text is stronger with text smoothing
    assert (soft @ TEXT[2]).item() > (hard @ TEXT[2]).item()


def test_text_smoothed_clip_without_smoothing_is_clip():
    ecg = F.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(2)), dim=1)
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1]])
    assert torch.allclose(TextSmoothedCLIPLoss(alpha=0.0)(ecg, TEXT, y, SCALE),
                          MultiLabelCLIPLoss()(ecg, TEXT, y, SCALE), atol=1e-6)


def test_findings_sigmoid_loss_by_hand():
    """Column 0 a class, columns 1 and 2 measured findings: the clip loss over all three,
    plus 0.5 x the mean sigmoid loss over the four (record, finding) pairs."""
    got = FindingsSigmoidLoss(MultiLabelCLIPLoss(), n_classes=1, weight=0.5)(
        ECG, TEXT, Y, SCALE, BIAS).item()
    y = Y.numpy()
    pairs = [-_logsig((2 * y[i, c] - 1) * (10 * SIM[i, c] - 2)) for i in range(2)
             for c in (1, 2)]
    want = MultiLabelCLIPLoss()(ECG, TEXT, Y, SCALE).item() + 0.5 * np.mean(pairs)
    assert math.isclose(got, want, rel_tol=1e-5)
    # without findings columns it is the loss alone; at weight 0 too
    assert math.isclose(FindingsSigmoidLoss(MultiLabelCLIPLoss(), n_classes=3)(
        ECG, TEXT, Y, SCALE, BIAS).item(), MultiLabelCLIPLoss()(ECG, TEXT, Y, SCALE).item(),
        rel_tol=1e-6)
    assert math.isclose(FindingsSigmoidLoss(MultiLabelCLIPLoss(), 1, weight=0.0)(
        ECG, TEXT, Y, SCALE, BIAS).item(), MultiLabelCLIPLoss()(ECG, TEXT, Y, SCALE).item(),
        rel_tol=1e-6)


def test_the_findings_sigmoid_pulls_records_by_their_findings_only():
    """Column 0 a class, columns 1 and 2 findings. What the sigmoid adds to the gradient moves
    a record towards a finding's text when it has the finding and off it when it has not, and
    leaves the class's column to the loss (a class-only batch gets nothing added)."""
    ecg = F.normalize(torch.tensor([[0.6, 0.3, 0.2], [0.6, 0.3, 0.2]]), dim=1)
    text = torch.eye(3)
    y = torch.tensor([[1, 0, 1], [1, 0, 0]])                # finding 2: record 0 only

    def descent(loss, labels):
        e = ecg.clone().requires_grad_()
        loss(F.normalize(e, dim=1), text, labels, SCALE, BIAS).backward()
        return -e.grad

    added = descent(FindingsSigmoidLoss(MultiLabelCLIPLoss(), 1), y) \
        - descent(MultiLabelCLIPLoss(), y)
    assert (added[0] @ text[2]).item() > 0 > (added[1] @ text[2]).item()
    classes_only = torch.tensor([[1, 0, 0], [0, 0, 0]])
    assert torch.allclose(descent(FindingsSigmoidLoss(MultiLabelCLIPLoss(), 3), classes_only),
                          descent(MultiLabelCLIPLoss(), classes_only))


def test_triplet_loss_by_hand():
    got = TripletLoss(margin=0.2)(ECG, TEXT, Y).item()
    terms = [max(0, 0.2 - SIM[0, 0] + SIM[0, 1]), max(0, 0.2 - SIM[0, 0] + SIM[0, 2]),
             max(0, 0.2 - SIM[1, 0] + SIM[1, 2]), max(0, 0.2 - SIM[1, 1] + SIM[1, 2])]
    assert math.isclose(got, np.mean(terms), rel_tol=1e-5)


def test_a_gradient_step_lowers_every_loss():
    start = F.normalize(torch.tensor([[0.2, 0.5, 0.8], [0.1, 0.1, 1.0]]), dim=1)
    for name in LOSSES:
        loss = build_loss(name)
        ecg = start.clone().requires_grad_(True)
        before = loss(F.normalize(ecg, dim=1), TEXT, Y, SCALE, BIAS)
        before.backward()
        after = loss(F.normalize(ecg.detach() - 0.05 * ecg.grad, dim=1), TEXT, Y, SCALE, BIAS)
        assert after.item() < before.item(), name


def test_a_batch_without_positives_gives_a_finite_loss_and_gradient():
    for name in LOSSES:
        loss_fn = build_loss(name)
        ecg = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
        value = loss_fn(ecg, TEXT, torch.zeros(4, 3, dtype=torch.long), SCALE, BIAS)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(ecg.grad).all(), name


def test_losses_hold_no_parameters():
    for name in LOSSES:
        assert not list(build_loss(name).parameters()), name
