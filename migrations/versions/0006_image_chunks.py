"""image chunks: an image's content in the shared database, so every node of an HA pair can serve it

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 00:10:00.000000

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'image_chunks',
        sa.Column('image_id', sa.Integer(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_image_chunks_image_id_images'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('image_id', 'seq', name=op.f('pk_image_chunks')),
    )


def downgrade():
    op.drop_table('image_chunks')
