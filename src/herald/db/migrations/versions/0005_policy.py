"""Consent, suppression and the send-time policy (issue 5): the contact's last inbound WhatsApp
message (the 24-hour window), WhatsApp template category and approval, indexes for frequency caps
and refusal counts, and the erasure log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import herald.db.types

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('contacts') as batch:
        batch.add_column(sa.Column('whatsapp_inbound_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('templates') as batch:
        batch.add_column(sa.Column('category', sa.String(length=24), nullable=True))
        batch.add_column(sa.Column('approval_status', sa.String(length=16), nullable=True))
    op.create_index('ix_messages_contact_sent', 'messages', ['contact_id', 'sent_at'])
    op.create_index('ix_messages_status', 'messages', ['workspace_id', 'status', 'status_reason'])
    op.create_table(
        'erasures',
        sa.Column('id', herald.db.types.BigIntPK, autoincrement=True, nullable=False),
        sa.Column('workspace_id', sa.String(length=32), nullable=False),
        sa.Column('contact_id', sa.String(length=32), nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=False),
        sa.Column('removed', herald.db.types.Json, server_default=sa.text("'{}'"), nullable=False),
        sa.Column('tombstones', sa.Integer(), server_default='0', nullable=False),
        sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name='fk_erasures_workspace_id_workspaces',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_erasures'),
    )
    op.create_index('ix_erasures_workspace', 'erasures', ['workspace_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_erasures_workspace', table_name='erasures')
    op.drop_table('erasures')
    op.drop_index('ix_messages_status', table_name='messages')
    op.drop_index('ix_messages_contact_sent', table_name='messages')
    with op.batch_alter_table('templates') as batch:
        batch.drop_column('approval_status')
        batch.drop_column('category')
    with op.batch_alter_table('contacts') as batch:
        batch.drop_column('whatsapp_inbound_at')
