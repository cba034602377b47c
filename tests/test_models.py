import pytest
import torch

from ecgshard.models import ECGEncoder, SeedCNN


@pytest.mark.parametrize("arch", ["seed-cnn", "resnet1d"])
@pytest.mark.parametrize("n_samples", [1000, 1250])
def test_encoders_give_unit_vectors_in_text_space(arch, n_samples):
    model = ECGEncoder(arch, n_samples, text_dim=48).eval()
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
    model = ECGEncoder("resnet1d", 1000, text_dim=16).eval()
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
