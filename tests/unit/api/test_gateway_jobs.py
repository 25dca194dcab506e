"""The daemon's gateway jobs by build ref: a call that comes just after its job ended reaches the job
(which answers that it ended or returned already), not "no such job"."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from buildsvc.daemon.gateway import GatewayJob, GatewayJobs
from buildsvc.errors import NotFound


def _job(ref: str) -> GatewayJob:
    return cast(GatewayJob, SimpleNamespace(build_ref=ref))


def test_a_job_that_just_ended_is_still_found() -> None:
    jobs = GatewayJobs(register_wait=0)
    job = _job("late")
    with jobs.registered(job):
        assert jobs.get("late") is job
    # The frontend's second Return raced the job's end: it must hear "returns once" from the job.
    assert jobs.get("late") is job
    with pytest.raises(NotFound, match="no such job"):
        jobs.get("never")


def test_a_new_job_with_the_ref_of_an_ended_one_is_the_one_found() -> None:
    jobs = GatewayJobs(register_wait=0)
    with jobs.registered(_job("again")):
        pass
    second = _job("again")
    with jobs.registered(second):
        assert jobs.get("again") is second
