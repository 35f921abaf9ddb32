"""guards: chat models bound to topic classifiers, and their decisions (issue #15)

Revision ID: 0002_guards
Revises: 0001
Create Date: 2026-12-01 22:15:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002_guards'
down_revision = '0001'
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('guards',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=1200), nullable=False),
    sa.Column('classifier', sa.String(length=1200), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('refusal', sa.Text(), nullable=False),
    sa.Column('separator', sa.Text(), nullable=False),
    sa.Column('prompt_template', sa.Text(), nullable=False),
    sa.Column('positive_label', sa.String(length=64), nullable=False),
    sa.Column('check_answer', sa.Boolean(), nullable=False),
    sa.Column('answer_template', sa.Text(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('org_id', 'model', name='uq_guards_org_model')
    )
    op.create_table('guard_decisions',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=1200), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('allowed', sa.Boolean(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('guard_decisions', schema=None) as batch_op:
        batch_op.create_index('ix_guard_decisions_org_model', ['org_id', 'model', 'pk'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('guard_decisions', schema=None) as batch_op:
        batch_op.drop_index('ix_guard_decisions_org_model')
    op.drop_table('guard_decisions')
    op.drop_table('guards')
