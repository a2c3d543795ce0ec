"""The example TorchScript models: any group size, any batch size, an all-zero mask."""

import pytest
import torch

import gen_model


@pytest.fixture(scope="module")
def model():
    return gen_model.build_model(feature_dim=64)


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("group", [1, 2, 17])
def test_output_shape_for_any_group_and_batch(model, batch, group):
    out = model(torch.randn(batch, group, 64), torch.ones(batch, group, dtype=torch.int64))
    assert out.shape == (batch, gen_model.OUTPUT_DIM)


def test_all_zero_mask_gives_finite_output(model):
    out = model(torch.randn(2, 5, 64), torch.zeros(2, 5, dtype=torch.int64))
    assert torch.isfinite(out).all()


def test_mask_excludes_padded_items(model):
    x = torch.randn(1, 4, 64)
    mask = torch.tensor([[1, 1, 0, 0]])
    padded = x.clone()
    padded[:, 2:] = 1000.0
    assert torch.allclose(model(x, mask), model(padded, mask))


def test_seed_makes_weights_deterministic():
    first, second = gen_model.build_model(128, seed=3), gen_model.build_model(128, seed=3)
    x, mask = torch.randn(2, 3, 128), torch.ones(2, 3, dtype=torch.int64)
    assert torch.equal(first(x, mask), second(x, mask))
    assert not torch.equal(first(x, mask), gen_model.build_model(128, seed=4)(x, mask))


def test_write_models_refuses_a_folder_without_configs(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.pbtxt"):
        gen_model.write_models(tmp_path)
