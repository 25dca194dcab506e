"""PostgreSQL connections plan every statement with its values (see ``open_database``).

A generic plan that psycopg's prepared statements would keep is made from the statistics of the
moment; made while a projection table is young, it scans the whole table for every ``= ANY(keys)``
row load ever after. The setting is per connection, so it is checked on connections of the pool.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from buildsvc.events.database import open_database
from tests.support.databases import PostgresTemplates


@pytest.mark.postgres
def test_every_pooled_connection_plans_statements_with_their_values(pg_templates: PostgresTemplates) -> None:
    with pg_templates.fresh() as url:
        db = open_database(url)
        try:
            with db.engine.connect() as first, db.engine.connect() as second:
                for conn in (first, second):
                    assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"
            with db.write() as conn:
                assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"
        finally:
            db.dispose()
