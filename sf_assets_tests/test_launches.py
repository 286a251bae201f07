"""Which launch a run belongs to (pure: tags in, a name out)."""
from sf_assets.orchestration.launches import BACKFILL_TAG, LEASE_TAG, SCHEDULE_TAG, SOURCES_TAG, launch_of


def test_a_run_belongs_to_its_lease_backfill_sensor_sources_or_schedule_in_that_order():
    tags = {SCHEDULE_TAG: "nightly", SOURCES_TAG: "abc", BACKFILL_TAG: "b1", LEASE_TAG: "host:1"}
    assert launch_of("r1", tags) == f"{LEASE_TAG}=host:1"
    del tags[LEASE_TAG]
    assert launch_of("r1", tags) == f"{BACKFILL_TAG}=b1"
    del tags[BACKFILL_TAG]
    assert launch_of("r1", tags) == f"{SOURCES_TAG}=abc"
    del tags[SOURCES_TAG]
    assert launch_of("r1", tags) == f"{SCHEDULE_TAG}=nightly"


def test_a_run_without_a_launch_tag_is_a_launch_of_its_own():
    assert launch_of("r1", {"other": "x"}) == "run=r1" != launch_of("r2", {})
    assert launch_of("r1", {LEASE_TAG: ""}) == "run=r1", "an empty tag names no launch"
