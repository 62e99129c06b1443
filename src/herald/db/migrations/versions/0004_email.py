"""Email end to end (issue 4): channel providers, sending domains, templates, suppressions,
the store's sender identity, and what a message renders and when it was sent/opened/clicked.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import herald.db.types

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'providers',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('workspace_id', sa.String(length=32), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('config', herald.db.types.Json, server_default=sa.text("'{}'"), nullable=False),
        sa.Column('secrets', sa.Text(), nullable=True),
        sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
        sa.Column('enabled', sa.Boolean(), server_default=sa.text('true'), nullable=False),
        sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name='fk_providers_workspace_id_workspaces',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_providers'),
        sa.UniqueConstraint('workspace_id', 'name', name='uq_providers_name'),
    )
    op.create_index('ix_providers_workspace', 'providers', ['workspace_id', 'channel', 'priority'])
    op.create_table(
        'sending_domains',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('workspace_id', sa.String(length=32), nullable=False),
        sa.Column('domain', sa.String(length=255), nullable=False),
        sa.Column('dkim_selector', sa.String(length=63), nullable=False),
        sa.Column('dkim_algorithm', sa.String(length=16), nullable=False),
        sa.Column('dkim_private_key', sa.Text(), nullable=False),
        sa.Column('dkim_txt', sa.Text(), nullable=False),
        sa.Column('spf_include', sa.String(length=255), nullable=True),
        sa.Column('dmarc_rua', sa.String(length=320), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('checks', herald.db.types.Json, server_default=sa.text("'{}'"), nullable=False),
        sa.Column('checked_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('verified_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('pending','verified','failed')", name='ck_sending_domains_status'),
        sa.CheckConstraint("dkim_algorithm IN ('rsa-2048','ed25519')", name='ck_sending_domains_dkim_algorithm'),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'],
                                name='fk_sending_domains_workspace_id_workspaces', ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_sending_domains'),
        sa.UniqueConstraint('workspace_id', 'domain', name='uq_sending_domains_domain'),
    )
    op.create_table(
        'templates',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('workspace_id', sa.String(length=32), nullable=False),
        sa.Column('store_id', sa.String(length=32), nullable=True),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('purpose', sa.String(length=16), nullable=False),
        sa.Column('default_language', sa.String(length=16), nullable=False),
        sa.Column('variants', herald.db.types.Json, nullable=False),
        sa.Column('version', sa.Integer(), server_default='1', nullable=False),
        sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("purpose IN ('marketing','transactional')", name='ck_templates_purpose'),
        sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name='fk_templates_store_id_stores', ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name='fk_templates_workspace_id_workspaces',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_templates'),
        sa.UniqueConstraint('workspace_id', 'name', name='uq_templates_name'),
    )
    op.create_table(
        'suppressions',
        sa.Column('id', herald.db.types.BigIntPK, autoincrement=True, nullable=False),
        sa.Column('workspace_id', sa.String(length=32), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('reason', sa.String(length=24), nullable=False),
        sa.Column('source', sa.String(length=64), nullable=False),
        sa.Column('message_id', sa.String(length=32), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("reason IN ('unsubscribed','hard_bounce','complaint','invalid','erased','manual')",
                           name='ck_suppressions_reason'),
        sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name='fk_suppressions_workspace_id_workspaces',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_suppressions'),
        sa.UniqueConstraint('workspace_id', 'channel', 'address', name='uq_suppressions_address'),
    )
    with op.batch_alter_table('stores') as batch:
        batch.add_column(sa.Column('email_from', sa.String(length=320), nullable=True))
        batch.add_column(sa.Column('email_from_name', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('postal_address', sa.Text(), nullable=True))
    with op.batch_alter_table('messages') as batch:
        batch.add_column(sa.Column('template_id', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('language', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('subject', sa.String(length=998), nullable=True))
        batch.add_column(sa.Column('context', herald.db.types.Json, server_default=sa.text("'{}'"),
                                   nullable=False))
        batch.add_column(sa.Column('sending_domain', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('sent_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('opened_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('clicked_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))
        batch.create_foreign_key('fk_messages_template_id_templates', 'templates', ['template_id'], ['id'],
                                 ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('messages') as batch:
        batch.drop_constraint('fk_messages_template_id_templates', type_='foreignkey')
        for name in ('clicked_at', 'opened_at', 'sent_at', 'attempts', 'sending_domain', 'context', 'subject',
                     'language', 'template_id'):
            batch.drop_column(name)
    with op.batch_alter_table('stores') as batch:
        for name in ('postal_address', 'email_from_name', 'email_from'):
            batch.drop_column(name)
    op.drop_table('suppressions')
    op.drop_table('templates')
    op.drop_table('sending_domains')
    op.drop_index('ix_providers_workspace', table_name='providers')
    op.drop_table('providers')
