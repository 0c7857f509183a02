"""device inventory indexes: keyset pages, filters, fleet counts, prefix search, a device's outbox events

Keyset pages on (sort key, serial) by serial, last seen, state and PID, and the inventory's filters; the counts by state and protocol;
case-insensitive prefix search on serial and hostname; the outbox events naming a device's serial.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00.000000

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# As the models write it (kept here as text: a migration never follows later changes of the models).
OUTBOX_DEVICE_SERIAL = "coalesce((payload -> 'device') ->> 'serial', ((payload -> 'job') -> 'device') ->> 'serial')"
COLUMN_INDEXES = (
    ('ix_devices_state_serial', ['state', 'serial']),
    ('ix_devices_last_seen_serial', ['last_seen', 'serial']),
    ('ix_devices_pid_serial', ['pid', 'serial']),
    ('ix_devices_software_version_serial', ['software_version', 'serial']),
    ('ix_devices_profile_serial', ['profile_id', 'serial']),
    ('ix_devices_state_protocol', ['state', 'protocol']),
)
FOLDED = (('ix_devices_serial_folded', 'serial'), ('ix_devices_hostname_folded', 'hostname'))


def upgrade():
    # Only new indexes: on PostgreSQL they block writes to the table while they build (a second or two for 100,000
    # devices), where dropping one, even ix_devices_state that (state, serial) makes redundant, waits for every
    # open transaction that read the table.
    with op.batch_alter_table('devices', schema=None) as batch_op:
        for name, columns in COLUMN_INDEXES:
            batch_op.create_index(name, columns, unique=False)
        for name, column in FOLDED:
            # PostgreSQL: byte-wise operators, so that a prefix is a range in any collation.
            folded = sa.func.lower(sa.literal_column(column)).label(f'{column}_folded')
            batch_op.create_index(name, [folded], unique=False,
                                  postgresql_ops={f'{column}_folded': 'text_pattern_ops'})

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_device_serial', [sa.text(OUTBOX_DEVICE_SERIAL), 'id'], unique=False)


def downgrade():
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_device_serial')

    with op.batch_alter_table('devices', schema=None) as batch_op:
        for name, _column in reversed(FOLDED):
            batch_op.drop_index(name)
        for name, _columns in reversed(COLUMN_INDEXES):
            batch_op.drop_index(name)
