"""Audit log: runs and rounds (one round per (run, round), never twice).

Revision ID: 0001
Revises:
Create Date: 2026-01-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_runs",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("protection_mode", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("protection", sa.JSON(), nullable=False),
        sa.Column("dp", sa.JSON(), nullable=False),
        sa.Column("model", sa.JSON(), nullable=False),
        sa.Column("final_metrics", sa.JSON(), nullable=True),
        sa.Column("model_card", sa.JSON(), nullable=True),
        sa.UniqueConstraint("run_id", name="uq_audit_runs_run_id"),
    )
    op.create_table(
        "audit_rounds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "run_id",
            sa.String(64),
            sa.ForeignKey("audit_runs.run_id", ondelete="CASCADE", name="fk_audit_rounds_run_id"),
            nullable=False,
        ),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sampled", sa.Integer(), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("refused_count", sa.Integer(), nullable=False),
        sa.Column("refused", sa.JSON(), nullable=False),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False),
        sa.Column("protection_mode", sa.String(16), nullable=False),
        sa.Column("dp_noise_std", sa.Float(), nullable=True),
        sa.Column("epsilon_spent", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.Column("skip_reason", sa.Text(), nullable=True),
        sa.UniqueConstraint("run_id", "round", name="uq_audit_rounds_run_round"),
    )
    op.create_index("ix_audit_rounds_finished_at", "audit_rounds", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_audit_rounds_finished_at", table_name="audit_rounds")
    op.drop_table("audit_rounds")
    op.drop_table("audit_runs")
