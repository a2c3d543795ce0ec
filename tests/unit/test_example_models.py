"""The example TorchScript models: any group size, any batch size, an all-zero mask."""

import pytest
import torch

from triton_warmup import example_models as gen_model
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


@pytest.fixture(scope="module")
def text_encoder():
    return gen_model.build_text_encoder()


@pytest.mark.parametrize("batch, length", [(1, 1), (3, 7), (8, gen_model.MAX_SEQUENCE_LENGTH)])
def test_text_encoder_takes_any_batch_and_length_up_to_its_maximum(text_encoder, batch, length):
    ids = torch.randint(0, gen_model.VOCABULARY_SIZE, (batch, length))
    out = text_encoder(ids, torch.ones(batch, length, dtype=torch.int64))
    assert out.shape == (batch, gen_model.EMBEDDING_DIM) and torch.isfinite(out).all()


def test_text_encoder_refuses_a_sequence_longer_than_its_positions(text_encoder):
    length = gen_model.MAX_SEQUENCE_LENGTH + 1
    with pytest.raises(Exception, match="index out of range"):
        text_encoder(torch.ones(1, length, dtype=torch.int64), torch.ones(1, length, dtype=torch.int64))


def test_text_encoder_gives_finite_output_for_warmups_zero_data(text_encoder):
    zeros = torch.zeros(2, 5, dtype=torch.int64)
    assert torch.isfinite(text_encoder(zeros, zeros)).all()


def test_text_encoder_ignores_padded_tokens(text_encoder):
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    other_padding = ids.clone()
    other_padding[:, 3:] = 999
    torch.testing.assert_close(text_encoder(ids, mask), text_encoder(other_padding, mask))
