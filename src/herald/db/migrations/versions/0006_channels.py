"""SMS, WhatsApp, push and in-site inbox channels (issue 6): push subscriptions (Web Push, FCM,
APNs tokens, retired when the provider says they are gone) and inbox items.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import herald.db.types

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'push_subscriptions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('workspace_id', sa.String(length=32), nullable=False),
        sa.Column('contact_id', sa.String(length=32), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('token', sa.String(length=2000), nullable=False),
        sa.Column('keys', herald.db.types.Json, server_default=sa.text("'{}'"), nullable=False),
        sa.Column('user_agent', sa.String(length=512), nullable=True),
        sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_used_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('retired_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('retired_reason', sa.String(length=64), nullable=True),
        sa.CheckConstraint("kind IN ('webpush','fcm','apns')", name='ck_push_subscriptions_kind'),
        sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name='fk_push_subscriptions_contact_id_contacts',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'],
                                name='fk_push_subscriptions_workspace_id_workspaces', ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_push_subscriptions'),
        sa.UniqueConstraint('workspace_id', 'kind', 'token', name='uq_push_subscriptions_token'),
    )
    op.create_index('ix_push_subscriptions_contact', 'push_subscriptions', ['contact_id', 'kind'])
    op.create_table(
        'inbox_items',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('workspace_id', sa.String(length=32), nullable=False),
        sa.Column('store_id', sa.String(length=32), nullable=True),
        sa.Column('contact_id', sa.String(length=32), nullable=False),
        sa.Column('message_id', sa.String(length=32), nullable=True),
        sa.Column('title', sa.String(length=500), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=True),
        sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('read_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name='fk_inbox_items_contact_id_contacts',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name='fk_inbox_items_message_id_messages',
                                ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name='fk_inbox_items_store_id_stores',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name='fk_inbox_items_workspace_id_workspaces',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_inbox_items'),
        sa.UniqueConstraint('message_id', name='uq_inbox_items_message_id'),
    )
    op.create_index('ix_inbox_items_contact', 'inbox_items', ['contact_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_inbox_items_contact', table_name='inbox_items')
    op.drop_table('inbox_items')
    op.drop_index('ix_push_subscriptions_contact', table_name='push_subscriptions')
    op.drop_table('push_subscriptions')
