"""The aggregator's authenticated writes: a run's start, each round, its end.

Every POST is a write; the request gate (http_gate.RequestGate) checks the token and the body
size before a body is read, and `require_writer` checks the token again in the route.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from fedchurn.server.api.constants import PREFIX
from fedchurn.server.api.deps import RunIdPath, Store, require_writer
from fedchurn.server.api.problems import problem_responses
from fedchurn.server.api.views import to_audit_round, to_run_detail
from fedchurn.server.api_models import AuditRound, RoundIn, RunDetail, RunFinishIn, RunStartIn

router = APIRouter(prefix=PREFIX, tags=["write"], dependencies=[Depends(require_writer)])
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 413, 422, 503)


@router.post(
    "/runs",
    response_model=RunDetail,
    status_code=201,
    summary="Start a run (aggregator)",
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)
def start_run(body: RunStartIn, response: Response, store: Store) -> RunDetail:
    rid = store.start_run(
        body.config,
        body.protection.model_dump(),
        body.dp.model_dump(),
        body.model.model_dump(),
    )
    response.headers["Location"] = f"{PREFIX}/runs/{rid}"
    found = store.get_run(rid)
    assert found is not None
    return to_run_detail(found)


@router.post(
    "/runs/{run_id}/rounds",
    response_model=AuditRound,
    status_code=201,
    summary="Record one round (aggregator)",
    responses=WRITE_ERRORS,
)
def record_round(run_id: RunIdPath, body: RoundIn, store: Store) -> AuditRound:
    """Idempotent per (run, round): a second write of the same round is refused with 409."""
    return to_audit_round(store.record_round_in(run_id, body))


@router.post(
    "/runs/{run_id}/finish",
    response_model=RunDetail,
    summary="Finish a run with its model card (aggregator)",
    responses=WRITE_ERRORS,
)
def finish_run(run_id: RunIdPath, body: RunFinishIn, store: Store) -> RunDetail:
    return to_run_detail(store.finish_run(run_id, body.status, body.final_metrics, body.model_card))
