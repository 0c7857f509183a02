"""new devices by source index: the per-source limit on devices never seen before counts with it

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 14:00:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.create_index('ix_devices_source_first_seen', ['address', 'first_seen'], unique=False)


def downgrade():
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index('ix_devices_source_first_seen')
