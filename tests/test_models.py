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
