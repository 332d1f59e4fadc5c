"""GET /openapi.json: valid OpenAPI 3.1 that names exactly the app's routes, and the
served bridge fuzzed against it with schemathesis (no 500; every status, content type,
header and body as documented, event streams included)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections import Counter
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator
from quart import Quart
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bridge import run_id as run_ids
from bridge.demo.legacy_api import Fault, LegacyApi
from bridge.settings import Settings, load
from bridge.web.app import create_app
from bridge.web.openapi import build_document
from tests.support import FAST, running_bridge

# --- the document and the app's routes --------------------------------------------------

#: Routes the document leaves out, each with its reason (bridge/web/openapi.py says the same).
LEFT_OUT = {
    ("GET", "/"): "the dashboard page: for people, off unless BRIDGE_DASHBOARD",
    ("GET", "/static/{filename}"): "the dashboard page's own files",
    ("GET", "/dashboard/config.json"): "what the dashboard page reads about this bridge",
    ("GET", "/demo/api/runs"): "sse-bridge demo's run list, for the page only",
    ("POST", "/demo/api/runs"): "sse-bridge demo: start a simulated run, for the page only",
    ("POST", "/demo/api/runs/{run_id}/cancel"): "sse-bridge demo: cancel a simulated run",
}
#: Quart answers these for every route by itself; documenting them adds nothing.
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def settings(**overrides: Any) -> Settings:
    return load(**{**FAST, "upstream_url": "http://127.0.0.1:9", **overrides})


def app_routes(app: Quart) -> set[tuple[str, str]]:
    """(method, path) of every rule, ``<run_id>``/``<path:filename>`` as ``{run_id}`` etc."""
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - AUTOMATIC_METHODS:
            routes.add((method, path))
    return routes


def document_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


async def served_document(app: Quart) -> dict[str, Any]:
    response = await app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    document: dict[str, Any] = json.loads(await response.get_data(as_text=True))
    return document


async def test_the_document_is_valid_openapi_3_1() -> None:
    document = await served_document(create_app(settings()))
    assert document["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(document).validate()
    # The validator does validate: the same document without its info fails.
    broken = copy.deepcopy(document)
    del broken["info"]
    with pytest.raises(Exception, match="info"):
        OpenAPIV31SpecValidator(broken).validate()


async def test_the_document_names_exactly_the_apps_routes() -> None:
    app = create_app(settings(dashboard=True))
    routes = app_routes(app)
    # Left out on purpose, and still there: the list goes stale neither way.
    assert set(LEFT_OUT) <= routes
    assert document_routes(await served_document(app)) == routes - set(LEFT_OUT)


async def test_the_document_tells_this_bridges_limits_and_forwarded_headers() -> None:
    document = await served_document(
        create_app(
            settings(longpoll_max=7, multi_max_runs=3, forward_headers="authorization,x-tenant")
        )
    )
    parameters = document["components"]["parameters"]
    assert parameters["Wait"]["schema"]["maximum"] == 7
    assert parameters["Runs"]["schema"]["maxItems"] == 3
    schemes = document["components"]["securitySchemes"]
    assert {s["name"] for s in schemes.values() if s["type"] == "apiKey"} == {
        "authorization",
        "x-tenant",
    }
    assert "Poke is off" in document["paths"]["/v1/runs/{run_id}/poll"]["post"]["description"]


@pytest.mark.parametrize(
    ("run_id", "accepted"),
    [
        ("r1", True),
        ("manual__2026-11-30T12:00:00+00:00", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        (".", False),
        ("-x", False),
        ("a/b", False),
        ("a b", False),
        ("é", False),
    ],
)
def test_the_documented_run_id_is_the_bridges_rule(run_id: str, accepted: bool) -> None:
    schema = build_document(settings())["components"]["parameters"]["RunId"]["schema"]
    documented = (
        schema["minLength"] <= len(run_id) <= schema["maxLength"]
        and re.search(schema["pattern"], run_id) is not None
    )
    try:
        run_ids.validate(run_id)
        valid = True
    except Exception:
        valid = False
    assert documented == valid == accepted


# --- schemathesis against the served bridge ------------------------------------------

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
#: Per operation and generation mode; the whole run stays well under a minute.
MAX_EXAMPLES = 25
POKE_TOKEN = "poke-token-for-the-fuzz-run"
#: Runs the simulated API knows, so that fuzzed requests reach the 200s and each refusal,
#: not only the 404 of a random id. A random id stays one of the choices.
KNOWN = ["done", "failed-run", "live", "secret", "flaky", "busy", "slow"]
#: Runs whose upstream misbehaves on purpose: their 502/503/504 are the contract, so
#: not_a_server_error is not asked of them (a 500 still fails, and the status, body and
#: headers must still be the documented ones).
FAULTY = {"flaky", "busy", "slow"}


def script(legacy: LegacyApi) -> None:
    legacy.scripted("done").advance(100)
    legacy.scripted("failed-run", outcome="failed").advance(100)
    legacy.scripted("live")  # never ends: its streams end by BRIDGE_STREAM_TIMEOUT
    legacy.scripted("secret")
    legacy.require("secret", "authorization", "Bearer good")
    faults = {
        "flaky": Fault("status", times=None, status=500),
        "busy": Fault("status", times=None, status=429, headers={"Retry-After": "3"}),
        "slow": Fault("slow", times=None, delay=5),
    }
    for run_id, fault in faults.items():
        legacy.scripted(run_id)
        legacy.inject(run_id, fault)


Seen = Counter[tuple[str, str, int]]


def fuzz(url: str) -> Seen:
    """Every operation: generated positive and negative data, then every known run;
    (operation, mode, status) -> requests.

    Runs in a worker thread: schemathesis calls with blocking `requests`, while the bridge
    and the simulated API keep serving on the test's event loop.
    """
    document = requests.get(url + "/openapi.json", timeout=10).json()
    # Loaded from the served document; from_url would leave /openapi.json itself out.
    schema = schemathesis.openapi.from_dict(document)
    seen: Seen = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        declared = document["paths"][operation.path][operation.method.lower()]
        fuzz_operation(url, operation, GenerationMode.POSITIVE, seen)
        if "parameters" in declared:  # else nothing to get wrong (Hypothesis: Unsatisfiable)
            fuzz_operation(url, operation, GenerationMode.NEGATIVE, seen)
            sweep(url, operation, seen)
    return seen


def aim(case: Case, run: str) -> None:
    """Point a positive case at ``run`` (the other generated parts stay)."""
    if "{run_id}" in case.operation.path:
        case.path_parameters = {**(case.path_parameters or {}), "run_id": run}
    if case.operation.path == "/v1/streams":
        case.query = {**(case.query or {}), "runs": [run, "done"]}


def send(
    url: str, case: Case, mode: GenerationMode, run: str | None, headers: dict[str, str], seen: Seen
) -> None:
    """One request, its response checked against the document."""
    response = case.call(base_url=url, headers=headers, timeout=15)
    seen[case.operation.label, mode.value, response.status_code] += 1
    assert response.status_code != 500, response.text
    faulty = mode is GenerationMode.POSITIVE and run in FAULTY
    checks = [c for c in CHECKS if not (faulty and c is not_a_server_error)]
    case.validate_response(response, checks=checks)


def fuzz_operation(url: str, operation: APIOperation, mode: GenerationMode, seen: Seen) -> None:
    """MAX_EXAMPLES generated requests to one operation."""

    @given(
        case=operation.as_strategy(generation_mode=mode),
        run=st.sampled_from([None, *KNOWN]),
        accept=st.sampled_from([None, "text/event-stream", "application/json"]),
        credential=st.sampled_from([None, "Bearer good", "Bearer wrong"]),
        token=st.booleans(),
    )
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: CI never flakes
        phases=[Phase.generate],
        # Loopback requests are slow by Hypothesis's standards; the bound is above.
        suppress_health_check=list(HealthCheck),
    )
    def one(
        case: Case, run: str | None, accept: str | None, credential: str | None, token: bool
    ) -> None:
        # Negative cases keep their broken parts; positive ones may aim at a known run.
        if mode is GenerationMode.POSITIVE and run is not None:
            aim(case, run)
        headers = {} if accept is None else {"Accept": accept}
        if operation.method.upper() == "POST":
            if token:
                headers["Authorization"] = f"Bearer {POKE_TOKEN}"
        elif credential is not None:
            headers["Authorization"] = credential  # forwarded: "secret" needs "Bearer good"
        send(url, case, mode, run, headers, seen)

    one()


def sweep(url: str, operation: APIOperation, seen: Seen) -> None:
    """Every known run (and an unknown one), each credential of "secret", with and without
    Accept: text/event-stream: every answer reached whatever Hypothesis happens to draw."""
    aimed = [(run, None) for run in [*KNOWN, "no-such-run"]]
    aimed += [("secret", "Bearer wrong"), ("secret", "Bearer good")]
    for run, credential in aimed:
        for accept in ("application/json", "text/event-stream"):
            case = operation.Case()
            aim(case, run)
            headers = {"Accept": accept}
            if operation.method.upper() == "POST":
                headers["Authorization"] = f"Bearer {POKE_TOKEN}"
            elif credential is not None:
                headers["Authorization"] = credential
            send(url, case, GenerationMode.POSITIVE, run, headers, seen)


def fuzz_overrides() -> dict[str, Any]:
    return {
        "stream_timeout": 0.5,  # a stream of a live run ends quickly by itself
        "longpoll_max": 1.0,  # so does the longest wait (the document says 1)
        "poke_token": POKE_TOKEN,
        # The faulty runs must not open the circuit for every other run.
        "breaker_threshold": 1_000_000,
        "upstream_timeout": 0.5,
    }


async def test_schemathesis_finds_no_500_and_every_answer_conforms(legacy: LegacyApi) -> None:
    script(legacy)
    async with running_bridge(legacy.url, **fuzz_overrides()) as b:
        seen = await asyncio.to_thread(fuzz, b.url)
    total = sum(seen.values())
    statuses = Counter(status for _, _, status in seen.elements())
    print(f"schemathesis: {total} requests; statuses {dict(sorted(statuses.items()))}")
    operations = {label for label, _, _ in seen}
    assert len(operations) == len(document_routes(build_document(settings())))
    assert total >= 400
    # The fuzzing reached the answers that matter, not only 400 and 404.
    assert {200, 202, 400, 401, 403, 404, 502, 503, 504} <= set(statuses)
    assert seen["GET /v1/runs/{run_id}/stream", "positive", 200] > 0
    assert seen["GET /v1/streams", "positive", 200] > 0


async def test_the_checks_catch_a_document_that_lies(legacy: LegacyApi) -> None:
    """The fuzzing above proves something: with a wrong document the same checks fail."""
    script(legacy)
    async with running_bridge(legacy.url, **fuzz_overrides()) as b:

        def check(path: str, run_id: str, mutate: Any, failure: str) -> None:
            document = requests.get(b.url + "/openapi.json", timeout=10).json()
            mutate(document["components"]["schemas"])
            operation = schemathesis.openapi.from_dict(document)[path]["GET"]
            case = operation.Case(path_parameters={"run_id": run_id})
            response = case.call(base_url=b.url, timeout=10)
            with pytest.raises(FailureGroup) as caught:
                case.validate_response(response, checks=CHECKS)
            assert failure in str(caught.value)

        def status_is_an_array(schemas: dict[str, Any]) -> None:
            schemas["Status"] = {"type": "array"}

        def message_is_a_number(schemas: dict[str, Any]) -> None:
            schemas["Error"]["properties"]["message"] = {"type": "integer"}

        lie = "Response violates schema"
        await asyncio.to_thread(check, "/v1/runs/{run_id}", "done", status_is_an_array, lie)
        await asyncio.to_thread(check, "/v1/runs/{run_id}/result", "x", message_is_a_number, lie)
        # In an event's data (the stream of a finished run: one complete event).
        lie = "SSE event violates schema"
        await asyncio.to_thread(check, "/v1/runs/{run_id}/stream", "done", status_is_an_array, lie)
