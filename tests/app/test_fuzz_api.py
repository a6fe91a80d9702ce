"""Property-based fuzzing of every operation of the OpenAPI document against the real app, with a valid token.

schemathesis generates requests from the document (valid and invalid parameters and bodies, uploads included);
every response must be below 500 and conform to the document: a listed status code, the listed content type and
headers, a body matching the listed schema. Bounded: a fixed number of examples per operation (about 35 s for
all of them here), no shrinking (the failing request is reported as generated), derandomized so that a run is
reproducible. Every failure of every operation is collected and reported together.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from app_helpers import TinyCheckpoint, upload_checkpoint
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings, strategies
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from diffaudit.store import LocalStore

EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def real_path_parameters(operation: Any, ids: dict[str, str]) -> dict[str, str]:
    """Existing ids for the operation's path parameters, so that the fuzzer reaches past the 404s."""
    return {name: value for name, value in ids.items() if "{" + name + "}" in operation.path}


def with_real_body_ids(case: Any, ids: dict[str, str]) -> Any:
    """A generated evaluation request, pointed at the project's checkpoint and the built-in dataset."""
    if isinstance(case.body, dict) and "checkpoint_id" in case.body:
        case.body = {**case.body, "checkpoint_id": ids["checkpoint_id"], "dataset_id": "digits"}
    return case


def fuzz(operation: Any, headers: dict[str, str], ids: dict[str, str]) -> list[str]:
    """Run one operation's examples (schema-valid and invalid, with random and with existing ids); the failures
    found, as readable reproducers."""
    known = real_path_parameters(operation, ids)
    strategy = strategies.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
        operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known or None).map(
            lambda case: with_real_body_ids(case, ids)
        ),
    )

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the reproducer is the request itself
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        run()
    except Exception as exc:  # hypothesis re-raises the check's failure with the request that caused it
        return [f"{operation.label}: {exc}"]
    return []


def test_every_response_is_below_500_and_documented(
    client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint, store: LocalStore
) -> None:
    checkpoint_id = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes).json()["id"]
    body = {"checkpoint_id": checkpoint_id, "dataset_id": "digits", "spec": {"stages": ["sample"]}}
    evaluation_id = client.post("/v1/evaluations", headers=auth, json=body).json()["id"]
    store.put_bytes(f"evaluations/{evaluation_id}/sample/result.json", b"{}")
    ids = {"checkpoint_id": checkpoint_id, "dataset_id": "digits", "evaluation_id": evaluation_id}
    ids["path"] = "sample/result.json"
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    failures = [failure for operation in operations for failure in fuzz(operation, auth, ids)]
    assert not failures, "\n\n".join(failures)
