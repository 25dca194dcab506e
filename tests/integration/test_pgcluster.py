"""ThrowawayCluster really stops and starts a PostgreSQL server, keeping its data and port."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.support.pgcluster import ThrowawayCluster

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster() -> Iterator[ThrowawayCluster]:
    with ThrowawayCluster() as c:
        yield c


def test_stop_refuses_connections_and_start_brings_the_data_back(cluster: ThrowawayCluster) -> None:
    url = cluster.start()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")

    held = psycopg.connect(url, autocommit=True)
    cluster.stop()
    assert not cluster.running
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)

    assert cluster.start() == url
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT n FROM kept").fetchone()
    assert row == (42,)


def test_restart_is_quick_and_keeps_the_url(cluster: ThrowawayCluster) -> None:
    url = cluster.start()
    assert cluster.restart() == url
    assert cluster.restart(mode="immediate") == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_close_stops_the_server_and_deletes_its_directory() -> None:
    cluster = ThrowawayCluster()
    url = cluster.start()
    cluster.close()
    assert not cluster.directory.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
