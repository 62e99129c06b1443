"""The store's version of each customer (so an older customer delivery never overwrites a
newer one) and lookups of contact merges by kept and by merged contact.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import herald.db.types

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('contact_stores') as batch:
        batch.add_column(sa.Column('customer_updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))
    op.create_index('ix_contact_merges_kept', 'contact_merges', ['workspace_id', 'kept_contact_id', 'id'])
    op.create_index('ix_contact_merges_merged', 'contact_merges', ['workspace_id', 'merged_contact_id'])


def downgrade() -> None:
    op.drop_index('ix_contact_merges_merged', table_name='contact_merges')
    op.drop_index('ix_contact_merges_kept', table_name='contact_merges')
    with op.batch_alter_table('contact_stores') as batch:
        batch.drop_column('customer_updated_at')
