"""Schemathesis over the served OpenAPI document: no 5xx, and every answer is what the document says.

The API runs under uvicorn against a real Redis; no worker runs, so submitted jobs stay queued. Each
operation gets a bounded, derandomized number of generated requests (the whole run takes well under
a minute on two cores). Checked: no server error, status codes and content types declared, bodies
and headers matching their schemas. Checks about the generator's own judgement (e.g. "schema-valid
data must be accepted", when a random model name is rightly a 404) are not run.
"""

from __future__ import annotations

import pytest
import torch

from latentq import Client

schemathesis = pytest.importorskip("schemathesis")

from collections import Counter

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]  # fmt: skip
EXAMPLES = 30  # per operation and pass (schema-valid data; invalid data; valid data with real names)


def bound_waits(case) -> None:
    """With no worker nothing ends: a generated ``wait=300`` (GET /v1/jobs/{id}) or a missing ``timeout``
    (remote routes: 300 s by default) would just sleep. Both are clamped to a fraction of a second here;
    other generated values are sent as they are."""
    if case.path.endswith(("/decode", "/encode")):
        case.query = {**(case.query or {}), "timeout": "0.2"}
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0.2:
        case.query["wait"] = 0.2


def pin(case, known: dict[str, str]) -> None:
    """Real names in place of generated ones (a served model, a queued job and batch), so the generated
    values of the other parameters and the bodies reach the code behind the lookups."""
    for name, value in known.items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = value
        if name == "model" and case.path in ("/v1/jobs", "/v1/batches"):
            case.query = {**(case.query or {}), "model": value}


# schemathesis' pytest plugin (``schemathesis.pytest.from_fixture``) does not run under pytest 9
# ("'Function' object has no attribute '_nodeid'"), so each operation's strategy is driven by hypothesis here.
@pytest.mark.timeout(180)
def test_every_generated_request_gets_a_documented_answer(procs):
    api = procs.api()
    client = Client()
    known = {"model": "taef2", "job_id": client.submit(torch.randn(32, 4, 4), model="taef2").id,
             "batch_id": client.submit_many(torch.randn(2, 32, 4, 4), model="taef2")[0].batch_id}  # fmt: skip
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    failures: list[str] = []
    answers: Counter[tuple[str, int]] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    passes = [(GenerationMode.POSITIVE, False), (GenerationMode.NEGATIVE, False), (GenerationMode.POSITIVE, True)]
    for operation in operations:
        for mode, pinned in passes:

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
            def run(case) -> None:
                if pinned:
                    pin(case, known)
                bound_waits(case)
                response = case.call_and_validate(base_url=api, checks=CHECKS, timeout=30)
                answers[operation.label, response.status_code] += 1

            try:
                run()
            except Unsatisfiable:
                # No invalid request exists for an operation without parameters; and no schema-valid
                # result key can be sent: it holds a "/", which schemathesis does not put in a path value.
                continue
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} ({mode.value}{', pinned' if pinned else ''}): {exc}")
    print("answers:", dict(sorted(answers.items())))
    assert not failures, "\n\n".join(failures)
    assert sum(answers.values()) > 200 and not any(status >= 500 for _, status in answers)
