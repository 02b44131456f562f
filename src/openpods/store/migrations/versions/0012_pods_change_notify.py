"""pods: NOTIFY openpods_pods on every row change (PostgreSQL only)

Each insert, update or delete of a pod row sends ``<tenant_id>\\t<pod_id>`` on the channel ``openpods_pods``
when its transaction commits, whichever process (or psql session) wrote it. The route table of every API
process listens, so a route changed by a spawner or health process elsewhere is re-rendered at once instead of
at the next periodic check. SQLite (one process) has no such need.

Revision ID: 0012
Revises: 0009
"""

from alembic import op

revision = '0012'
down_revision = '0009'
branch_labels = None
depends_on = None

CHANNEL = "openpods_pods"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""
CREATE OR REPLACE FUNCTION openpods_pods_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('{CHANNEL}', OLD.tenant_id || E'\\t' || OLD.pod_id);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('{CHANNEL}', NEW.tenant_id || E'\\t' || NEW.pod_id);
    RETURN NEW;
END $$;
""")
    op.execute("""
CREATE TRIGGER openpods_pods_notify AFTER INSERT OR UPDATE OR DELETE ON pods
FOR EACH ROW EXECUTE FUNCTION openpods_pods_notify();
""")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS openpods_pods_notify ON pods")
    op.execute("DROP FUNCTION IF EXISTS openpods_pods_notify()")
