import shutil

import pytest
import torch

import numpy as np

from ecgshard.models import ARCHS, ECGEncoder, EncoderConfig, SeedCNN, ZeroShotModel


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("n_samples", [1000, 1250])
def test_encoders_give_unit_vectors_in_text_space(arch, n_samples):
    model = ECGEncoder(EncoderConfig(arch=arch, n_samples=n_samples, text_dim=48)).eval()
    out = model(torch.randn(3, 12, n_samples))
    assert out.shape == (3, 48)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_seed_cnn_batchnorm_widths_follow_the_convs():
    cnn = SeedCNN(1000)
    convs = [m for m in cnn.features if isinstance(m, torch.nn.Conv1d)]
    norms = [m for m in cnn.features if isinstance(m, torch.nn.BatchNorm1d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert [n.num_features for n in norms] == [32, 64, 128, 256]
    assert cnn.fc.in_features == 256 * (1000 // 16)


def test_resnet_pooling_ignores_zero_padding():
    """A 6 s record padded to 10 s: with its valid length, mean and max pool only the feature
    steps that cover it; without, the padding drags the mean down."""
    torch.manual_seed(0)
    model = ECGEncoder(EncoderConfig(text_dim=16)).eval()
    x = torch.zeros(2, 12, 1000)
    x[:, :, :600] = torch.randn(2, 12, 600)
    length = torch.tensor([600, 1000])
    with torch.no_grad():
        h = model.backbone.layers(model.backbone.stem(x))         # (2, C, T')
        pooled = model.backbone(x, length)
        valid = -(-600 * h.shape[-1] // 1000)
        want = torch.cat([h[0, :, :valid].mean(-1), h[0, :, :valid].amax(-1)])
        assert torch.allclose(pooled[0], want, atol=1e-5)
        assert torch.allclose(pooled[1], model.backbone(x[1:])[0], atol=1e-5)  # full length
        assert not torch.allclose(pooled[0], model.backbone(x[:1])[0], atol=1e-3)


@pytest.mark.skipif(not shutil.which("c++"), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_resnet_under_bf16_autocast_gets_finite_eager_like_gradients():
    """What --compile --amp trains through: the compiled encoder's gradients under bf16
    autocast are finite and point where the eager ones do. With amax pooling they were NaN
    from the first step (pytorch/pytorch#186799), on CUDA and, as here, with CPU autocast."""
    torch.manual_seed(0)
    model = ECGEncoder(EncoderConfig(text_dim=16, width=0.25))
    x, length = torch.randn(8, 12, 1000), torch.tensor([1000, 600] * 4)
    target = torch.randn(8, 16)
    grads = []
    for forward in (model, torch.compile(model)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(x, length)
        (out * target).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    eager, compiled = grads
    assert torch.isfinite(compiled).all()
    # bf16 rounding alone leaves eager fp32 and bf16 gradients at a cosine of about 0.98
    assert torch.nn.functional.cosine_similarity(compiled, eager, dim=0) > 0.9


def test_encode_batches_without_gradients_and_equals_forward():
    torch.manual_seed(0)
    encoder = ECGEncoder(EncoderConfig(text_dim=8))
    signal = np.random.default_rng(0).normal(size=(5, 12, 1000)).astype(np.float16)
    length = np.array([1000, 600, 1000, 800, 1000])
    got = encoder.encode(signal, length, batch_size=2)
    with torch.no_grad():
        want = encoder(torch.from_numpy(signal).float(), torch.from_numpy(length)).numpy()
    assert got.shape == (5, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert encoder.encode(signal[:0]).shape == (0, 8)


def test_the_model_owns_scale_bias_and_class_vectors():
    text = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    frozen = ZeroShotModel(EncoderConfig(text_dim=8), text)
    assert torch.equal(frozen.class_emb(), text) and frozen.scale().item() == pytest.approx(10)
    assert "text_class_emb" not in frozen.state_dict()          # the text matrix is the source
    decay, no_decay = frozen.param_groups(0.1)
    # decay on conv and linear weights only; never on norms, biases, the scale or the bias
    norms = [p for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm1d)
             for p in m.parameters()]
    assert norms and all(any(p is q for q in no_decay["params"]) for p in norms)
    assert any(p is frozen.logit_scale for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(frozen.parameters()))
    learned = ZeroShotModel(EncoderConfig(text_dim=8), text, learn_class_emb=True)
    assert any(p is learned.learned_class_emb for p in learned.param_groups(0.1)[0]["params"])
    with pytest.raises(ValueError, match="unknown architecture"):
        EncoderConfig(arch="transformer")
