"""Store intake: store connections (secrets, write key), checkouts, fulfilments, refunds,
products, contact aggregates, webhook deliveries, event resolution state, CSV imports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import herald.db.types

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('imports',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('source_name', sa.String(length=500), nullable=False),
    sa.Column('path', sa.String(length=2000), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('encoding', sa.String(length=32), nullable=True),
    sa.Column('mapping', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('options', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('offset', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('line', sa.Integer(), server_default='0', nullable=False),
    sa.Column('rows_ok', sa.Integer(), server_default='0', nullable=False),
    sa.Column('rows_unchanged', sa.Integer(), server_default='0', nullable=False),
    sa.Column('rows_failed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("kind IN ('contacts','orders')", name=op.f('ck_imports_kind')),
    sa.CheckConstraint("state IN ('pending','running','completed','failed','cancelled')", name=op.f('ck_imports_state')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_imports_store_id_stores'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_imports_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_imports'))
    )
    with op.batch_alter_table('imports', schema=None) as batch_op:
        batch_op.create_index('ix_imports_workspace', ['workspace_id', 'id'], unique=False)

    op.create_table('products',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('title', sa.String(length=500), nullable=False),
    sa.Column('handle', sa.String(length=255), nullable=True),
    sa.Column('url', sa.String(length=2000), nullable=True),
    sa.Column('image_url', sa.String(length=2000), nullable=True),
    sa.Column('vendor', sa.String(length=255), nullable=True),
    sa.Column('product_type', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('price_minor', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('variants', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('source_updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_products_store_id_stores'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_products_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_products')),
    sa.UniqueConstraint('store_id', 'external_id', name='uq_products_store_external')
    )
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=False),
    sa.Column('platform', sa.String(length=20), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('dedupe_key', sa.String(length=255), nullable=False),
    sa.Column('headers', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('duplicates', sa.Integer(), server_default='0', nullable=False),
    sa.Column('received_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('processed_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('received','processed','unknown_topic','failed')", name=op.f('ck_webhook_deliveries_status')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_webhook_deliveries_store_id_stores'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_webhook_deliveries_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('store_id', 'dedupe_key', name='uq_webhook_deliveries_dedupe')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_status', ['workspace_id', 'status', 'received_at'], unique=False)

    op.create_table('checkouts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=False),
    sa.Column('contact_id', sa.String(length=32), nullable=True),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('token', sa.String(length=255), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('subtotal_minor', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('total_minor', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('discount_codes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('lines', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('recovery_url', sa.String(length=2000), nullable=True),
    sa.Column('completed_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('order_id', sa.String(length=32), nullable=True),
    sa.Column('started_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('source_updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_checkouts_contact_id_contacts'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_checkouts_order_id_orders'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_checkouts_store_id_stores'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_checkouts_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkouts')),
    sa.UniqueConstraint('store_id', 'external_id', name='uq_checkouts_store_external')
    )
    with op.batch_alter_table('checkouts', schema=None) as batch_op:
        batch_op.create_index('ix_checkouts_contact', ['contact_id', 'started_at'], unique=False)
        batch_op.create_index('ix_checkouts_token', ['store_id', 'token'], unique=False)

    op.create_table('fulfillments',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=False),
    sa.Column('order_id', sa.String(length=32), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('shipment_status', sa.String(length=32), nullable=True),
    sa.Column('tracking_company', sa.String(length=255), nullable=True),
    sa.Column('tracking_numbers', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('tracking_urls', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('source_updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_fulfillments_order_id_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_fulfillments_store_id_stores'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_fulfillments_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fulfillments')),
    sa.UniqueConstraint('store_id', 'external_id', name='uq_fulfillments_store_external')
    )
    with op.batch_alter_table('fulfillments', schema=None) as batch_op:
        batch_op.create_index('ix_fulfillments_order', ['order_id'], unique=False)

    op.create_table('import_errors',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('import_id', sa.String(length=32), nullable=False),
    sa.Column('line', sa.Integer(), nullable=False),
    sa.Column('column', sa.String(length=200), nullable=True),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['import_id'], ['imports.id'], name=op.f('fk_import_errors_import_id_imports'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_import_errors'))
    )
    with op.batch_alter_table('import_errors', schema=None) as batch_op:
        batch_op.create_index('ix_import_errors_import', ['import_id', 'line'], unique=False)

    op.create_table('refunds',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=False),
    sa.Column('store_id', sa.String(length=32), nullable=False),
    sa.Column('order_id', sa.String(length=32), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('refunded_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', herald.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_refunds_order_id_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_refunds_store_id_stores'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_refunds_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds')),
    sa.UniqueConstraint('store_id', 'external_id', name='uq_refunds_store_external')
    )
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.create_index('ix_refunds_order', ['order_id'], unique=False)

    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('orders_count', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('total_spent', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'{}'"), nullable=False))
        batch_op.add_column(sa.Column('first_order_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_order_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_checkout_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='track', nullable=False))
        batch_op.add_column(sa.Column('user_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('anonymous_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('processed_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_events_pending', ['id'], unique=False, sqlite_where=sa.text('processed_at IS NULL'), postgresql_where=sa.text('processed_at IS NULL'))

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('refunded_minor', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('checkout_token', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('status_url', sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column('source_updated_at', herald.db.types.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('stores', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_secret', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('previous_webhook_secret', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('previous_webhook_secret_until', herald.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('api_base_url', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('api_credentials', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('write_key_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('write_key_prefix', sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column('sync_state', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'{}'"), nullable=False))
        batch_op.create_unique_constraint(batch_op.f('uq_stores_write_key_hash'), ['write_key_hash'])



def downgrade() -> None:
    with op.batch_alter_table('stores', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_stores_write_key_hash'), type_='unique')
        batch_op.drop_column('sync_state')
        batch_op.drop_column('write_key_prefix')
        batch_op.drop_column('write_key_hash')
        batch_op.drop_column('api_credentials')
        batch_op.drop_column('api_base_url')
        batch_op.drop_column('previous_webhook_secret_until')
        batch_op.drop_column('previous_webhook_secret')
        batch_op.drop_column('webhook_secret')

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('source_updated_at')
        batch_op.drop_column('status_url')
        batch_op.drop_column('checkout_token')
        batch_op.drop_column('refunded_minor')

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_pending', sqlite_where=sa.text('processed_at IS NULL'), postgresql_where=sa.text('processed_at IS NULL'))
        batch_op.drop_column('processed_at')
        batch_op.drop_column('anonymous_id')
        batch_op.drop_column('user_id')
        batch_op.drop_column('kind')

    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_column('last_checkout_at')
        batch_op.drop_column('last_order_at')
        batch_op.drop_column('first_order_at')
        batch_op.drop_column('total_spent')
        batch_op.drop_column('orders_count')

    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_index('ix_refunds_order')

    op.drop_table('refunds')
    with op.batch_alter_table('import_errors', schema=None) as batch_op:
        batch_op.drop_index('ix_import_errors_import')

    op.drop_table('import_errors')
    with op.batch_alter_table('fulfillments', schema=None) as batch_op:
        batch_op.drop_index('ix_fulfillments_order')

    op.drop_table('fulfillments')
    with op.batch_alter_table('checkouts', schema=None) as batch_op:
        batch_op.drop_index('ix_checkouts_token')
        batch_op.drop_index('ix_checkouts_contact')

    op.drop_table('checkouts')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_status')

    op.drop_table('webhook_deliveries')
    op.drop_table('products')
    with op.batch_alter_table('imports', schema=None) as batch_op:
        batch_op.drop_index('ix_imports_workspace')

    op.drop_table('imports')
