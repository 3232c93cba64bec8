"""embed_images on a tiny real model, flip-sum normalisation, and the on-disk feature cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from facekd.errors import DataError
from facekd.evaluation.embed import EmbeddingCache, checkpoint_hash, embed_images, flip_sum_normalize


def _model():
    torch.manual_seed(0)
    # BatchNorm makes train-mode output depend on the batch: a batch-size-independent result proves eval mode.
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _images(n=7):
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def _by_hand(model, images):
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.5) / 127.5
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_embeddings_and_flip_half_match_by_hand():
    model, images = _model(), _images()
    model.train()
    feats = embed_images(model, images, batch_size=3, progress=False)
    assert feats.shape == (7, 10) and feats.dtype == np.float32
    assert model.training  # mode restored for the training loop
    np.testing.assert_allclose(feats[:, :5], _by_hand(model, images), atol=1e-5)
    np.testing.assert_allclose(feats[:, 5:], _by_hand(model, images[:, :, ::-1].copy()), atol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_batch_size_and_layout_do_not_change_results(channels_last):
    model, images = _model(), _images()
    a = embed_images(model, images, batch_size=7, flip=False, channels_last=channels_last, progress=False)
    b = embed_images(model, images, batch_size=2, flip=False, channels_last=channels_last, progress=False)
    assert a.shape == (7, 5)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_images():
    with pytest.raises(DataError, match="uint8"):
        embed_images(_model(), np.zeros((2, 8, 8, 3), np.float32), progress=False)
    with pytest.raises(DataError, match="N = 0"):
        embed_images(_model(), np.zeros((0, 8, 8, 3), np.uint8), progress=False)


def test_flip_sum_normalize():
    feats = np.array([[3.0, 0.0, 0.0, 4.0], [1.0, 1.0, -1.0, -1.0]], np.float32)
    out = flip_sum_normalize(feats)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)  # zero sum stays zero, no NaN
    with pytest.raises(DataError, match="2d"):
        flip_sum_normalize(feats[:, :3])


def test_cache_computes_once_and_survives_a_corrupt_file(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    images = np.zeros((3, 2, 2, 3), np.uint8)
    key = EmbeddingCache.key("abc123", "lfw", images)
    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    np.testing.assert_array_equal(first, second)
    assert len(calls) == 1
    path = cache.path(key)
    assert path.suffix == ".npy" and "/" not in path.name
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    assert cache.path(EmbeddingCache.key("abc123", "lfw", images, flip=False)) != path
    path.write_bytes(b"not a numpy file")
    np.testing.assert_array_equal(cache.get_or_compute(key, compute), first)
    assert len(calls) == 2


def test_checkpoint_hash(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights-1")
    b.write_bytes(b"weights-2")
    assert checkpoint_hash(a) != checkpoint_hash(b) and len(checkpoint_hash(a)) == 16
    with pytest.raises(DataError, match="cannot read"):
        checkpoint_hash(tmp_path / "missing.pt")
