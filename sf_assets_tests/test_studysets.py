"""Registering a campaign's partitions: idempotent, and safe when two launches register at once."""
from __future__ import annotations

import dagster as dg

from sf_assets.core.campaign import Campaign
from sf_assets.orchestration.assets.studysets import register_partitions
from sf_assets.orchestration.partitions import RECORDINGS, SORTERS
from sf_assets.stores.inputs import load_config


def _campaign(synthetic_studyset) -> Campaign:
    return Campaign(*load_config(str(synthetic_studyset.manifest_path), str(synthetic_studyset.spec_path), None))


def test_registering_twice_adds_nothing_the_second_time(synthetic_studyset):
    campaign = _campaign(synthetic_studyset)
    with dg.instance_for_test() as instance:
        recordings, sorters = register_partitions(instance, campaign)
        assert recordings == [r for r in instance.get_dynamic_partitions(RECORDINGS)] and recordings
        assert sorters == instance.get_dynamic_partitions(SORTERS) and sorters
        assert register_partitions(instance, campaign) == ([], [])


def test_losing_the_insert_race_to_another_launch_is_not_an_error(synthetic_studyset, monkeypatch):
    """The race: another launch inserts the same keys between Dagster's own read and insert, and
    Dagster's insert fails on its unique key. The keys are read again; nothing is lost or doubled."""
    from sqlalchemy.exc import IntegrityError

    campaign = _campaign(synthetic_studyset)
    with dg.instance_for_test() as instance:
        insert = instance.add_dynamic_partitions
        lost = []

        def racing_insert(name, keys):
            if name == RECORDINGS and not lost:
                lost.append(list(keys))
                insert(name, keys)  # the other launch's insert lands first ...
                raise IntegrityError("INSERT INTO dynamic_partitions", {}, Exception("UNIQUE constraint failed"))
            return insert(name, keys)  # ... and this one's fails on the unique key

        monkeypatch.setattr(instance, "add_dynamic_partitions", racing_insert)
        recordings, sorters = register_partitions(instance, campaign)
        assert lost and recordings == [] and sorters  # the other launch added the recordings
        everything = instance.get_dynamic_partitions(RECORDINGS)
        assert everything == lost[0] and len(everything) == len(campaign.recordings())
