"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis): on both
backends, no request may cause a 5xx, and every response must match the documented status
codes, content types and schemas. (Schema-valid input may still be refused with 422 where
the schema cannot say it all, e.g. that a phone must be a real number: that check is off.)
It is a broad net with few examples per operation, not a proof: known edge cases (NUL
characters, oversize bodies, bad cursors) have their own tests in test_problems.py."""

from __future__ import annotations

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings

from tests.api.conftest import World

EXAMPLES_PER_OPERATION = 25


def test_api_conforms_to_its_openapi(client: TestClient, world: World) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    headers = world.callers["A"].headers
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, phases=[Phase.explicit, Phase.generate])  # no shrinking: bounded time
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers,
                                   excluded_checks=[schemathesis.checks.positive_data_acceptance])

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)
