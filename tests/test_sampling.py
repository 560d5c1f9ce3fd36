"""Next-token sampling: greedy, temperature, top-k, top-p, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from ferroformer.generate.sampling import check_sampling_args, filter_logits, sample_next

from helpers import assert_close

LOGITS = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))


def test_temperature_zero_is_argmax():
    assert sample_next(LOGITS, temperature=0).tolist() == [0, 3]


def test_top_k_one_is_greedy_whatever_the_seed():
    for seed in range(5):
        assert sample_next(LOGITS, top_k=1, rng=seed).tolist() == [0, 3]


def test_top_p_keeps_the_smallest_set_reaching_p():
    z = filter_logits(LOGITS, top_p=0.7)
    assert np.isfinite(z[0]).tolist() == [True, True, False, False]  # 0.5 + 0.3 >= 0.7
    assert np.isfinite(z[1]).tolist() == [False, False, True, True]
    z = filter_logits(LOGITS, top_p=0.1)
    assert np.isfinite(z).sum(axis=1).tolist() == [1, 1]


def test_top_k_keeps_k_best():
    z = filter_logits(LOGITS, top_k=2)
    assert np.isfinite(z[0]).tolist() == [True, True, False, False]


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    a = [sample_next(LOGITS, rng=np.random.default_rng(7)).tolist() for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(0)
    draws = np.array([sample_next(LOGITS[:1], rng=rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert_close(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03, rtol=1e-7)


@pytest.mark.parametrize(
    "kw", [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)]
)
def test_bad_sampling_arguments(kw):
    args = dict(temperature=1.0, top_k=None, top_p=None) | kw
    with pytest.raises(ValueError, match="generate"):
        check_sampling_args(**args)
