"""The worker's seeding of a sorter's unseeded random draws (sf_assets/engines/seeded_draws.py).

test_determinism sorts with it for real (Simple's sortings identical on two instances).
"""
from __future__ import annotations

import random

import numpy as np

from sf_assets.core.sorter_catalog import PROJECT_SEED, resolve_sorter
from sf_assets.engines.job import SortJob
from sf_assets.engines.provenance import draws_seed
from sf_assets.engines.seeded_draws import seeded_unseeded_draws


def _draws() -> tuple:
    """What a sorter's unseeded draws would give: three generators, numpy's global one, Python's."""
    generators = tuple(int(np.random.default_rng().integers(1 << 62)) for _ in range(3))
    return generators, float(np.random.random()), random.random()


def test_the_same_seed_gives_the_same_draws_in_the_same_order():
    with seeded_unseeded_draws(0):
        first = _draws()
    with seeded_unseeded_draws(0):
        second = _draws()
    with seeded_unseeded_draws(1):
        other = _draws()
    assert first == second
    assert len(set(first[0])) == 3, "each unseeded generator is a stream of its own"
    assert other[0] != first[0] and other[1:] != first[1:]


def test_unseeded_draws_outside_a_sort_stay_unseeded_and_numpys_generator_resumes():
    np.random.seed(12345)
    expected_global = np.random.random()
    np.random.seed(12345)
    with seeded_unseeded_draws(0):
        _draws()
    assert np.random.random() == expected_global, "numpy's global generator resumes where it was"
    assert np.random.default_rng().integers(1 << 62) != np.random.default_rng().integers(1 << 62)


def _kept_draw(kept) -> int:
    return int(kept().integers(1 << 62))


def test_a_default_rng_kept_by_name_during_one_sort_follows_the_next_sorts_seed():
    """A module first imported during a sort (``from numpy.random import default_rng``) keeps the function."""
    with seeded_unseeded_draws(0):
        from numpy.random import default_rng as kept

        first = _kept_draw(kept)
    with seeded_unseeded_draws(0):
        assert _kept_draw(kept) == first
    assert _kept_draw(kept) != _kept_draw(kept)


def test_generators_made_by_an_import_in_a_fresh_workers_first_sort_do_not_shift_the_sorters_draws():
    """A fresh worker imports scipy.stats during its first sort, which makes unseeded generators; a warm
    worker's later sort does not: the sorter's own draws must be the same in both."""
    with seeded_unseeded_draws(0):
        [np.random.default_rng() for _ in range(4)]  # what the import does, from lines of its own
        fresh = _draws()
    with seeded_unseeded_draws(0):
        warm = _draws()
    assert fresh == warm


def _unseeded_by_name() -> int:
    return int(np.random.default_rng(seed=None).integers(1 << 62))


def test_a_draw_with_its_own_seed_is_left_alone_and_numpys_signature_holds():
    with seeded_unseeded_draws(0):
        inside = np.random.default_rng(7).integers(1 << 62, size=4)
        by_name = np.random.default_rng(seed=7).integers(1 << 62, size=4)
        unseeded_by_name = _unseeded_by_name()
    with seeded_unseeded_draws(0):
        assert _unseeded_by_name() == unseeded_by_name
    assert (inside == np.random.default_rng(7).integers(1 << 62, size=4)).all()
    assert (by_name == inside).all()


def _job(sorter: str, params: dict, image: str | None = None) -> SortJob:
    return SortJob(
        label=f"{sorter}/study/rec", sorter_name=sorter, si_sorter_name=resolve_sorter(sorter).si_name,
        params=params, recording_uri="sha1://0", work_dir="/nonexistent", kachery_dir="/nonexistent",
        container_image=image,
    )


def test_the_draws_take_the_sorters_seed_else_the_projects_and_none_in_a_container():
    assert draws_seed(_job("Simple", {"seed": 42}), resolve_sorter("Simple")) == 42
    assert draws_seed(_job("MountainSort5", {"whitening_seed": 3}), resolve_sorter("MountainSort5")) == 3
    assert draws_seed(_job("Simple", {"seed": None}), resolve_sorter("Simple")) == PROJECT_SEED
    assert draws_seed(_job("MountainSort4", {}), resolve_sorter("MountainSort4")) == PROJECT_SEED
    assert draws_seed(_job("Simple", {"seed": 0}, image="spikeinterface/x:1"), resolve_sorter("Simple")) is None


def test_a_seed_numpy_would_refuse_still_seeds_the_draws():
    for seed in (2**32, -1):
        with seeded_unseeded_draws(seed):
            first = _draws()
        with seeded_unseeded_draws(seed):
            assert _draws() == first
