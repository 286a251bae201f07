"""The project's settings from the environment, and the one reading of yes/no words."""
from __future__ import annotations

import argparse

import pytest

from sf_assets.cli.flags import use_container
from sf_assets.core.errors import SfAssetsError
from sf_assets.core.settings import FALSE_WORDS, TRUE_WORDS, bool_word, env_flag, load_settings
from sf_assets.engines.slurm_config import SLURM_ENV, slurm_resource_config

NO_FLAGS = argparse.Namespace(use_container=False, no_container=False)


@pytest.mark.parametrize("word", sorted(TRUE_WORDS | FALSE_WORDS))
def test_every_yes_no_variable_reads_the_same_words(word, tmp_path):
    """The container switch, Slurm's switch and the kachery-cloud switch agree on every word."""
    expected = word in TRUE_WORDS
    for spelled in (word, f" {word.upper()} "):
        assert bool_word(spelled) is expected
        assert use_container(NO_FLAGS, {"SF_ASSETS_USE_CONTAINER": spelled}) is expected
        assert bool(slurm_resource_config({SLURM_ENV: spelled})) is expected
        settings = load_settings({"SF_ASSETS_HOME": str(tmp_path), "SF_ASSETS_KACHERY_CLOUD": spelled})
        assert settings.kachery_local_only is not expected


def test_unset_and_empty_are_off_and_an_unknown_word_names_the_variable(tmp_path):
    assert env_flag({}, "X") is None
    assert env_flag({"X": ""}, "X") is False
    assert load_settings({"SF_ASSETS_HOME": str(tmp_path)}).kachery_local_only is True
    for read in (
        lambda env: load_settings({"SF_ASSETS_HOME": str(tmp_path), **env}),
        lambda env: use_container(NO_FLAGS, env),
    ):
        name = "SF_ASSETS_KACHERY_CLOUD" if "load_settings" in read.__code__.co_names else "SF_ASSETS_USE_CONTAINER"
        with pytest.raises(SfAssetsError, match=rf"environment variable {name}='ture': expected one of 1, true"):
            read({name: "ture"})
    with pytest.raises(SfAssetsError, match=r"accept_shared_nodes='maybe', expected one of 1, true"):
        slurm_resource_config({SLURM_ENV: "accept_shared_nodes=maybe"})


def test_the_first_container_variable_that_is_set_decides():
    assert use_container(NO_FLAGS, {"SF_ASSETS_USE_CONTAINER": "", "HITHER_USE_CONTAINER": "1"}) is False
    assert use_container(NO_FLAGS, {"HITHER_USE_CONTAINER": "TRUE"}) is True
    assert use_container(argparse.Namespace(use_container=False, no_container=True), {"HITHER_USE_CONTAINER": "1"}) is False
