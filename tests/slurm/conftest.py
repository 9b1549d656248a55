"""One local SLURM cluster (2 fake nodes) per test session; skips without SLURM unless CI is set."""
import os

import pytest

from slurm_cluster import Cluster, unavailable_reason


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: SLURM tests must run, not skip)")
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
