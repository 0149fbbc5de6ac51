"""Refusals counted by reason (no device ids); ε against the aggregator per round.

- `audit_rounds.refused` keeps `[{"reason": str, "count": int}]` sorted by reason: rows written
  under 0001 named each refused device, and are rewritten here to counts, so no device id stays
  in the table. `refused_count` (now the sum of the counts) becomes a BIGINT.
- `audit_rounds.epsilon_aggregator` (nullable): ε against the aggregator, which knows who took
  part (no amplification by sampling), beside `epsilon_spent` (ε against outsiders).

Offline (`--sql`) mode emits the DDL only: rewriting the refusals needs the rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fedchurn.server.audit import refusal_counts

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_rounds = sa.table(
    "audit_rounds",
    sa.column("id", sa.Integer()),
    sa.column("refused", sa.JSON()),
    sa.column("refused_count", sa.BigInteger()),
)


def upgrade() -> None:
    with op.batch_alter_table("audit_rounds") as batch:
        batch.add_column(sa.Column("epsilon_aggregator", sa.Float(), nullable=True))
        batch.alter_column(
            "refused_count", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
        )
    if op.get_context().as_sql:
        return
    conn = op.get_bind()
    for row_id, refused in conn.execute(sa.select(_rounds.c.id, _rounds.c.refused)).all():
        counted = refusal_counts(refused)
        if counted != refused:
            conn.execute(
                sa.update(_rounds)
                .where(_rounds.c.id == row_id)
                .values(refused=counted, refused_count=sum(r["count"] for r in counted))
            )


def downgrade() -> None:
    # The refusals stay counted: the device ids are gone for good.
    with op.batch_alter_table("audit_rounds") as batch:
        batch.alter_column(
            "refused_count", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
        )
        batch.drop_column("epsilon_aggregator")
