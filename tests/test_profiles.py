"""BRIDGE_PROFILE presets, unit level: every expression compiles, the state lists are
disjoint, and realistic status objects (the field names and values the APIs document)
yield the state and the event the profile promises. No network, no bridge."""

from __future__ import annotations

import dataclasses
from typing import Any

import jq
import pytest

from bridge.profiles import PROFILES, Profile, describe

CONTRACT_NAMES = {
    "github-actions",
    "gitlab-pipelines",
    "google-operations",
    "azure-operations",
    "jenkins",
    "kubernetes-jobs",
    "databricks-runs",
    "argo-workflows",
    "airflow-dag-runs",
    "replicate-predictions",
    "openai-batches",
}

Status = dict[str, Any]


def state_of(profile: Profile, status: Status) -> Any:
    """The state as the bridge reads it: the first output, None when there is none."""
    out = jq.compile(profile.state_expr).input_value(status).all()
    return out[0] if out else None


def progress_of(profile: Profile, status: Status) -> Any:
    if profile.progress_expr is None:
        return None
    out = jq.compile(profile.progress_expr).input_value(status).all()
    return out[0] if out else None


def bucket(profile: Profile, state: str | None) -> str:
    """Which list a state falls in; None and "" are "still going" by the contract."""
    if state is None or state == "":
        return "in_progress"
    folded = state.casefold()
    for name, states in (
        ("success", profile.success),
        ("failure", profile.failure),
        ("in_progress", profile.in_progress),
    ):
        if folded in {s.casefold() for s in states}:
            return name
    return "unlisted"


def fingerprint(profile: Profile, status: Status) -> Any:
    """The status as compared for a change: its ignored paths deleted."""
    if not profile.ignore_fields:
        return status
    return jq.compile("del(" + ", ".join(profile.ignore_fields) + ")").input_value(status).first()


# --- realistic status objects, shaped after each API's documented examples ------------


def github(status: str, conclusion: str | None = None, **extra: Any) -> Status:
    return {
        "id": 30433642,
        "name": "Build",
        "head_branch": "main",
        "head_sha": "acb5820ced9479c074f688cc328bf03f341a511d",
        "run_number": 562,
        "run_attempt": 1,
        "event": "push",
        "status": status,
        "conclusion": conclusion,
        "workflow_id": 159038,
        "url": "https://api.github.com/repos/octo-org/octo-repo/actions/runs/30433642",
        "html_url": "https://github.com/octo-org/octo-repo/actions/runs/30433642",
        "created_at": "2020-01-22T19:33:08Z",
        "updated_at": "2020-01-22T19:33:08Z",
        "run_started_at": "2020-01-22T19:33:08Z",
        **extra,
    }


def gitlab(status: str, **extra: Any) -> Status:
    return {
        "id": 287,
        "iid": 144,
        "project_id": 21,
        "name": "Build pipeline",
        "sha": "50f0acb76a40e34a4ff304f7347dcc6587da8a14",
        "ref": "main",
        "status": status,
        "source": "push",
        "created_at": "2022-09-21T01:05:07.200Z",
        "updated_at": "2022-09-21T01:05:50.185Z",
        "web_url": "http://127.0.0.1:3000/test-group/test-project/-/pipelines/287",
        "started_at": "2022-09-21T01:05:14.197Z",
        "finished_at": None,
        "duration": None,
        "queued_duration": 6,
        "coverage": None,
        "detailed_status": {"icon": f"status_{status}", "group": status},
        **extra,
    }


def google(**result: Any) -> Status:
    return {
        "name": "projects/demo/locations/us-central1/operations/operation-1700000000000-abc",
        "metadata": {
            "@type": "type.googleapis.com/google.cloud.run.v2.Service",
            "createTime": "2026-11-30T12:00:00Z",
        },
        **result,
    }


def azure(status: str, **extra: Any) -> Status:
    return {
        "id": "/subscriptions/sub/providers/Microsoft.Compute/locations/westus/operations/9a06",
        "name": "9a062a88-e463-4697-bef2-fe039df73a02",
        "status": status,
        "startTime": "2017-01-06T18:58:24.7596323+00:00",
        **extra,
    }


def jenkins(building: bool, result: str | None, **extra: Any) -> Status:
    return {
        "_class": "hudson.model.FreeStyleBuild",
        "number": 42,
        "building": building,
        "result": result,
        "duration": 0 if building else 61234,
        "estimatedDuration": 60000,
        "timestamp": 1700000000000,
        "url": "http://jenkins.example/job/build/42/",
        **extra,
    }


def k8s_job(status: Status, resource_version: str = "4711") -> Status:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "pi",
            "namespace": "default",
            "resourceVersion": resource_version,
            "managedFields": [
                {"manager": "kube-controller-manager", "time": "2026-11-30T12:00:05Z"}
            ],
        },
        "spec": {"completions": 5, "parallelism": 2, "backoffLimit": 6},
        "status": status,
    }


def condition(kind: str, status: str = "True") -> Status:
    return {
        "type": kind,
        "status": status,
        "lastProbeTime": "2026-11-30T12:01:00Z",
        "lastTransitionTime": "2026-11-30T12:01:00Z",
    }


def databricks(life_cycle: str, result: str | None = None) -> Status:
    state: Status = {"life_cycle_state": life_cycle, "state_message": ""}
    if result is not None:
        state["result_state"] = result
        state["user_cancelled_or_timedout"] = result in ("CANCELED", "TIMEDOUT")
    return {
        "job_id": 11223344,
        "run_id": 455644833,
        "number_in_job": 455644833,
        "state": state,
        "start_time": 1625060460483,
        "run_page_url": "https://my-workspace.cloud.databricks.com/#job/11223344/run/123",
        "run_type": "JOB_RUN",
    }


def argo(phase: str | None, progress: str = "0/3", resource_version: str = "9876") -> Status:
    status: Status = {"startedAt": "2026-11-30T12:00:00Z", "progress": progress}
    if phase is not None:
        status["phase"] = phase
    return {
        "metadata": {
            "name": "hello-world-x7k2p",
            "namespace": "argo",
            "resourceVersion": resource_version,
            "managedFields": [{"manager": "workflow-controller", "time": "2026-11-30T12:00:01Z"}],
        },
        "spec": {"entrypoint": "main"},
        "status": status,
    }


def airflow(state: str, **extra: Any) -> Status:
    return {
        "dag_id": "example_bash_operator",
        "dag_run_id": "manual__2026-11-30T12:00:00+00:00",
        "logical_date": "2026-11-30T12:00:00+00:00",
        "start_date": "2026-11-30T12:00:01+00:00",
        "end_date": None,
        "data_interval_start": "2026-11-30T12:00:00+00:00",
        "data_interval_end": "2026-11-30T12:00:00+00:00",
        "last_scheduling_decision": "2026-11-30T12:00:05+00:00",
        "run_type": "manual",
        "state": state,
        "external_trigger": True,
        "conf": {},
        "note": None,
        **extra,
    }


def replicate(status: str, logs: str = "", **extra: Any) -> Status:
    return {
        "id": "gm3qorzdhgbfurvjtvhg6dckhu",
        "model": "replicate/hello-world",
        "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        "input": {"text": "Alice"},
        "logs": logs,
        "output": None,
        "error": None,
        "status": status,
        "created_at": "2023-09-08T16:19:34.765994Z",
        "started_at": None,
        "completed_at": None,
        "urls": {
            "get": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu",
            "cancel": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel",
        },
        **extra,
    }


def openai(status: str, total: int = 100, completed: int = 0, failed: int = 0) -> Status:
    return {
        "id": "batch_abc123",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": None,
        "input_file_id": "file-abc123",
        "completion_window": "24h",
        "status": status,
        "output_file_id": None,
        "error_file_id": None,
        "created_at": 1711471533,
        "in_progress_at": 1711471538,
        "expires_at": 1711557933,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": {"customer_id": "user_123456789"},
    }


# (profile, label, status object, expected state, expected list)
STATE_CASES: list[tuple[str, str, Status, str | None, str]] = [
    # GitHub: status, then conclusion once completed.
    ("github-actions", "requested", github("requested"), "requested", "in_progress"),
    ("github-actions", "queued", github("queued"), "queued", "in_progress"),
    ("github-actions", "pending", github("pending"), "pending", "in_progress"),
    ("github-actions", "waiting", github("waiting"), "waiting", "in_progress"),
    ("github-actions", "running", github("in_progress"), "in_progress", "in_progress"),
    (
        "github-actions",
        "a conclusion before completed is not read",
        github("in_progress", "failure"),
        "in_progress",
        "in_progress",
    ),
    ("github-actions", "success", github("completed", "success"), "success", "success"),
    ("github-actions", "neutral", github("completed", "neutral"), "neutral", "success"),
    ("github-actions", "skipped", github("completed", "skipped"), "skipped", "success"),
    ("github-actions", "failure", github("completed", "failure"), "failure", "failure"),
    ("github-actions", "cancelled", github("completed", "cancelled"), "cancelled", "failure"),
    ("github-actions", "timed_out", github("completed", "timed_out"), "timed_out", "failure"),
    (
        "github-actions",
        "action_required",
        github("completed", "action_required"),
        "action_required",
        "failure",
    ),
    ("github-actions", "stale", github("completed", "stale"), "stale", "failure"),
    (
        "github-actions",
        "startup_failure",
        github("completed", "startup_failure"),
        "startup_failure",
        "failure",
    ),
    (
        "github-actions",
        "completed without a conclusion is still settling",
        github("completed", None),
        None,
        "in_progress",
    ),
    # GitLab: one status field.
    ("gitlab-pipelines", "created", gitlab("created"), "created", "in_progress"),
    (
        "gitlab-pipelines",
        "waiting_for_resource",
        gitlab("waiting_for_resource"),
        "waiting_for_resource",
        "in_progress",
    ),
    ("gitlab-pipelines", "preparing", gitlab("preparing"), "preparing", "in_progress"),
    ("gitlab-pipelines", "pending", gitlab("pending"), "pending", "in_progress"),
    ("gitlab-pipelines", "running", gitlab("running"), "running", "in_progress"),
    ("gitlab-pipelines", "manual (blocked)", gitlab("manual"), "manual", "in_progress"),
    ("gitlab-pipelines", "scheduled", gitlab("scheduled"), "scheduled", "in_progress"),
    ("gitlab-pipelines", "success", gitlab("success", duration=34), "success", "success"),
    ("gitlab-pipelines", "failed", gitlab("failed", duration=34), "failed", "failure"),
    ("gitlab-pipelines", "canceled", gitlab("canceled"), "canceled", "failure"),
    ("gitlab-pipelines", "skipped", gitlab("skipped"), "skipped", "failure"),
    # Google: done + error/response.
    ("google-operations", "no done field yet", google(), "running", "in_progress"),
    ("google-operations", "done false", google(done=False), "running", "in_progress"),
    (
        "google-operations",
        "done with a response",
        google(done=True, response={"@type": "type.googleapis.com/google.cloud.run.v2.Service"}),
        "succeeded",
        "success",
    ),
    (
        "google-operations",
        "done with an empty response (a Delete)",
        google(done=True, response={"@type": "type.googleapis.com/google.protobuf.Empty"}),
        "succeeded",
        "success",
    ),
    (
        "google-operations",
        "done with an error",
        google(done=True, error={"code": 3, "message": "Invalid argument"}),
        "failed",
        "failure",
    ),
    (
        "google-operations",
        "done with code 1: cancelled",
        google(done=True, error={"code": 1, "message": "Operation was cancelled"}),
        "cancelled",
        "failure",
    ),
    # Azure: status, provider values in between.
    ("azure-operations", "InProgress", azure("InProgress"), "InProgress", "in_progress"),
    ("azure-operations", "Running", azure("Running"), "Running", "in_progress"),
    ("azure-operations", "Accepted", azure("Accepted"), "Accepted", "in_progress"),
    (
        "azure-operations",
        "Succeeded",
        azure("Succeeded", endTime="2017-01-06T18:59:00+00:00"),
        "Succeeded",
        "success",
    ),
    (
        "azure-operations",
        "Failed",
        azure("Failed", error={"code": "InternalError", "message": "boom"}),
        "Failed",
        "failure",
    ),
    ("azure-operations", "Canceled", azure("Canceled"), "Canceled", "failure"),
    # Jenkins: building, then result.
    ("jenkins", "building", jenkins(True, None), "BUILDING", "in_progress"),
    (
        "jenkins",
        "an intermediate result while building is not final",
        jenkins(True, "FAILURE"),
        "BUILDING",
        "in_progress",
    ),
    ("jenkins", "SUCCESS", jenkins(False, "SUCCESS"), "SUCCESS", "success"),
    ("jenkins", "FAILURE", jenkins(False, "FAILURE"), "FAILURE", "failure"),
    ("jenkins", "UNSTABLE", jenkins(False, "UNSTABLE"), "UNSTABLE", "failure"),
    ("jenkins", "ABORTED", jenkins(False, "ABORTED"), "ABORTED", "failure"),
    ("jenkins", "NOT_BUILT", jenkins(False, "NOT_BUILT"), "NOT_BUILT", "failure"),
    ("jenkins", "not building, no result yet", jenkins(False, None), None, "in_progress"),
    # Kubernetes: conditions, then active.
    ("kubernetes-jobs", "just created", k8s_job({}), None, "in_progress"),
    (
        "kubernetes-jobs",
        "pods active",
        k8s_job({"active": 2, "ready": 1, "startTime": "2026-11-30T12:00:00Z"}),
        "Active",
        "in_progress",
    ),
    (
        "kubernetes-jobs",
        "suspended",
        k8s_job({"conditions": [condition("Suspended")]}),
        "Suspended",
        "in_progress",
    ),
    (
        "kubernetes-jobs",
        "resumed (Suspended False) with pods",
        k8s_job({"active": 1, "conditions": [condition("Suspended", "False")]}),
        "Active",
        "in_progress",
    ),
    (
        "kubernetes-jobs",
        "success criteria met, pods terminating",
        k8s_job({"active": 0, "succeeded": 5, "conditions": [condition("SuccessCriteriaMet")]}),
        "SuccessCriteriaMet",
        "in_progress",
    ),
    (
        "kubernetes-jobs",
        "Complete",
        k8s_job(
            {
                "succeeded": 5,
                "completionTime": "2026-11-30T12:02:00Z",
                "conditions": [condition("SuccessCriteriaMet"), condition("Complete")],
            }
        ),
        "Complete",
        "success",
    ),
    (
        "kubernetes-jobs",
        "failure target, pods terminating",
        k8s_job({"active": 1, "failed": 7, "conditions": [condition("FailureTarget")]}),
        "FailureTarget",
        "in_progress",
    ),
    (
        "kubernetes-jobs",
        "Failed",
        k8s_job({"failed": 7, "conditions": [condition("FailureTarget"), condition("Failed")]}),
        "Failed",
        "failure",
    ),
    (
        "kubernetes-jobs",
        "a condition with status False does not count",
        k8s_job({"active": 1, "conditions": [condition("Failed", "False")]}),
        "Active",
        "in_progress",
    ),
    # Databricks: life_cycle_state, then result_state once TERMINATED.
    ("databricks-runs", "QUEUED", databricks("QUEUED"), "QUEUED", "in_progress"),
    ("databricks-runs", "PENDING", databricks("PENDING"), "PENDING", "in_progress"),
    ("databricks-runs", "RUNNING", databricks("RUNNING"), "RUNNING", "in_progress"),
    ("databricks-runs", "BLOCKED", databricks("BLOCKED"), "BLOCKED", "in_progress"),
    (
        "databricks-runs",
        "WAITING_FOR_RETRY",
        databricks("WAITING_FOR_RETRY"),
        "WAITING_FOR_RETRY",
        "in_progress",
    ),
    (
        "databricks-runs",
        "TERMINATING with a result already shown",
        databricks("TERMINATING", "SUCCESS"),
        "TERMINATING",
        "in_progress",
    ),
    ("databricks-runs", "SUCCESS", databricks("TERMINATED", "SUCCESS"), "SUCCESS", "success"),
    (
        "databricks-runs",
        "SUCCESS_WITH_FAILURES",
        databricks("TERMINATED", "SUCCESS_WITH_FAILURES"),
        "SUCCESS_WITH_FAILURES",
        "success",
    ),
    ("databricks-runs", "EXCLUDED", databricks("TERMINATED", "EXCLUDED"), "EXCLUDED", "success"),
    ("databricks-runs", "FAILED", databricks("TERMINATED", "FAILED"), "FAILED", "failure"),
    ("databricks-runs", "TIMEDOUT", databricks("TERMINATED", "TIMEDOUT"), "TIMEDOUT", "failure"),
    ("databricks-runs", "CANCELED", databricks("TERMINATED", "CANCELED"), "CANCELED", "failure"),
    (
        "databricks-runs",
        "MAXIMUM_CONCURRENT_RUNS_REACHED",
        databricks("TERMINATED", "MAXIMUM_CONCURRENT_RUNS_REACHED"),
        "MAXIMUM_CONCURRENT_RUNS_REACHED",
        "failure",
    ),
    (
        "databricks-runs",
        "UPSTREAM_FAILED",
        databricks("TERMINATED", "UPSTREAM_FAILED"),
        "UPSTREAM_FAILED",
        "failure",
    ),
    (
        "databricks-runs",
        "UPSTREAM_CANCELED",
        databricks("TERMINATED", "UPSTREAM_CANCELED"),
        "UPSTREAM_CANCELED",
        "failure",
    ),
    ("databricks-runs", "DISABLED", databricks("TERMINATED", "DISABLED"), "DISABLED", "failure"),
    ("databricks-runs", "SKIPPED (life cycle)", databricks("SKIPPED"), "SKIPPED", "failure"),
    (
        "databricks-runs",
        "INTERNAL_ERROR wins over its result",
        databricks("INTERNAL_ERROR", "FAILED"),
        "INTERNAL_ERROR",
        "failure",
    ),
    (
        "databricks-runs",
        "TERMINATED without a result still ends",
        databricks("TERMINATED"),
        "TERMINATED",
        "failure",
    ),
    # Argo: status.phase.
    ("argo-workflows", "not yet reconciled", argo(None), None, "in_progress"),
    ("argo-workflows", "Unknown (empty phase)", argo(""), "", "in_progress"),
    ("argo-workflows", "Pending", argo("Pending"), "Pending", "in_progress"),
    ("argo-workflows", "Running", argo("Running", "1/3"), "Running", "in_progress"),
    ("argo-workflows", "Succeeded", argo("Succeeded", "3/3"), "Succeeded", "success"),
    ("argo-workflows", "Failed", argo("Failed", "1/3"), "Failed", "failure"),
    ("argo-workflows", "Error", argo("Error", "0/3"), "Error", "failure"),
    # Airflow: state.
    ("airflow-dag-runs", "queued", airflow("queued"), "queued", "in_progress"),
    ("airflow-dag-runs", "running", airflow("running"), "running", "in_progress"),
    (
        "airflow-dag-runs",
        "success",
        airflow("success", end_date="2026-11-30T12:05:00+00:00"),
        "success",
        "success",
    ),
    ("airflow-dag-runs", "failed", airflow("failed"), "failed", "failure"),
    # Replicate: status.
    ("replicate-predictions", "starting", replicate("starting"), "starting", "in_progress"),
    (
        "replicate-predictions",
        "processing",
        replicate("processing", "Using seed: 1\n"),
        "processing",
        "in_progress",
    ),
    (
        "replicate-predictions",
        "succeeded",
        replicate("succeeded", output="hello Alice", metrics={"predict_time": 0.012683}),
        "succeeded",
        "success",
    ),
    (
        "replicate-predictions",
        "failed",
        replicate("failed", error="CUDA out of memory"),
        "failed",
        "failure",
    ),
    ("replicate-predictions", "canceled", replicate("canceled"), "canceled", "failure"),
    ("replicate-predictions", "aborted", replicate("aborted"), "aborted", "failure"),
    # OpenAI: status.
    ("openai-batches", "validating", openai("validating", 0), "validating", "in_progress"),
    (
        "openai-batches",
        "in_progress",
        openai("in_progress", 100, 23, 1),
        "in_progress",
        "in_progress",
    ),
    ("openai-batches", "finalizing", openai("finalizing", 100, 98, 2), "finalizing", "in_progress"),
    ("openai-batches", "cancelling", openai("cancelling", 100, 23, 1), "cancelling", "in_progress"),
    ("openai-batches", "completed", openai("completed", 100, 98, 2), "completed", "success"),
    ("openai-batches", "failed validation", openai("failed", 0), "failed", "failure"),
    ("openai-batches", "expired", openai("expired", 100, 60, 0), "expired", "failure"),
    ("openai-batches", "cancelled", openai("cancelled", 100, 23, 1), "cancelled", "failure"),
]


#: Presets beyond DESIGN.md's names: APIs whose runs are event feeds (BRIDGE_FEED_PATH).
FEED_NAMES = {"livy-batches"}


def test_the_contract_names_and_the_feed_presets() -> None:
    assert set(PROFILES) == CONTRACT_NAMES | FEED_NAMES
    assert all(name == profile.name for name, profile in PROFILES.items())
    assert all(PROFILES[name].feed is not None for name in FEED_NAMES)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_list_and_feed_filters_compile_and_paths_are_examples(name: str) -> None:
    profile = PROFILES[name]
    if profile.fleet is not None:
        jq.compile(profile.fleet.items)
        jq.compile(profile.fleet.id)
        assert profile.fleet.example_path.startswith("/")
        assert "{run_id}" not in profile.fleet.example_path
    if profile.feed is not None:
        for expr in profile.feed.settings().values():
            if expr != profile.feed.start:
                jq.compile(expr)
        assert profile.feed.example_path.count("{run_id}") == 1
        assert profile.feed.example_path.count("{cursor}") == 1


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_expressions_and_ignored_paths_compile(name: str) -> None:
    profile = PROFILES[name]
    jq.compile(profile.state_expr)
    if profile.progress_expr is not None:
        jq.compile(profile.progress_expr)
    if profile.detail_expr is not None:
        jq.compile(profile.detail_expr)
    for path in profile.ignore_fields:
        jq.compile(f"del({path})")
    if profile.ignore_fields:
        jq.compile("del(" + ", ".join(profile.ignore_fields) + ")")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_state_lists_are_disjoint_and_filled(name: str) -> None:
    profile = PROFILES[name]
    lists = [profile.success, profile.failure, profile.in_progress]
    # Every one of these APIs has a success, a failure and an in-between state.
    assert all(lists)
    folded = [{s.casefold() for s in states} for states in lists]
    assert sum(len(f) for f in folded) == len(folded[0] | folded[1] | folded[2])
    # No duplicates within a list, and no empty state (which would mean "any").
    for states in lists:
        assert len({s.casefold() for s in states}) == len(states)
        assert all(s.strip() for s in states)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_metadata_is_documentation_not_configuration(name: str) -> None:
    profile = PROFILES[name]
    assert profile.summary and "\n" not in profile.summary
    assert profile.docs and all(url.startswith("https://") for url in profile.docs)
    # The example path passes the same rule as BRIDGE_UPSTREAM_RUN_PATH.
    assert profile.example_run_path.startswith("/")
    assert profile.example_run_path.count("{run_id}") == 1
    # Static protocol headers only: never a credential.
    credential_headers = {"authorization", "cookie", "x-api-key", "private-token", "api-key"}
    assert not {h.lower() for h in profile.upstream_headers} & credential_headers


def test_profiles_are_frozen() -> None:
    profile = PROFILES["github-actions"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.state_expr = ".x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        profile.upstream_headers["Accept"] = "text/plain"  # type: ignore[index]
    with pytest.raises(TypeError):
        PROFILES["mine"] = profile  # type: ignore[index]
    assert dict(profile.upstream_headers) == {
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    assert hash(profile) == hash(PROFILES["github-actions"])


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_describe_names_what_the_profile_sets(name: str) -> None:
    profile = PROFILES[name]
    text = describe(profile)
    assert text.startswith(f"{name}: ")
    assert ",".join(profile.success) in text
    assert ",".join(profile.failure) in text
    assert profile.example_run_path in text
    assert all(url in text for url in profile.docs)
    assert all(f"{k}: {v}" in text for k, v in profile.upstream_headers.items())


@pytest.mark.parametrize(
    ("name", "status", "state", "expected"),
    [pytest.param(n, s, st, e, id=f"{n}: {label}") for n, label, s, st, e in STATE_CASES],
)
def test_documented_status_objects_yield_the_promised_state(
    name: str, status: Status, state: str | None, expected: str
) -> None:
    profile = PROFILES[name]
    got = state_of(profile, status)
    assert got == state
    assert bucket(profile, got) == expected
    # Named in-progress states are listed on purpose, not just left unlisted.
    if got:
        assert bucket(profile, got) != "unlisted"


@pytest.mark.parametrize("name", sorted(CONTRACT_NAMES))
def test_every_listed_state_is_covered_by_a_sample(name: str) -> None:
    """Each state the profile names is produced by one of the documented samples above."""
    produced = {state_of(PROFILES[n], s) for n, _, s, _, _ in STATE_CASES if n == name} - {None}
    profile = PROFILES[name]
    listed = set(profile.success) | set(profile.failure) | set(profile.in_progress)
    assert listed <= produced


def test_comparison_is_case_insensitive_as_the_bridge_does() -> None:
    profile = PROFILES["azure-operations"]
    assert bucket(profile, "succeeded") == "success"
    assert bucket(profile, "CANCELED") == "failure"


# (profile, base, the same but an ignored field changed, the same but a seen field changed)
IGNORE_CASES: list[tuple[str, Status, Status, Status]] = [
    (
        "github-actions",
        github("in_progress"),
        github("in_progress", updated_at="2020-01-22T19:35:41Z"),
        github("in_progress", run_attempt=2),
    ),
    (
        "gitlab-pipelines",
        gitlab("running"),
        gitlab("running", updated_at="2022-09-21T01:05:59.001Z"),
        gitlab("running", coverage="81.5"),
    ),
    (
        "kubernetes-jobs",
        k8s_job({"active": 2, "ready": 1}),
        {
            **k8s_job({"active": 2, "ready": 1}, resource_version="4712"),
            "metadata": {
                "name": "pi",
                "namespace": "default",
                "resourceVersion": "4712",
                "managedFields": [
                    {"manager": "kube-controller-manager", "time": "2026-11-30T12:00:09Z"}
                ],
            },
        },
        k8s_job({"active": 2, "ready": 2}, resource_version="4712"),
    ),
    (
        "argo-workflows",
        argo("Running", "1/3"),
        argo("Running", "1/3", resource_version="9877"),
        argo("Running", "2/3", resource_version="9877"),
    ),
    (
        "airflow-dag-runs",
        airflow("running"),
        airflow("running", last_scheduling_decision="2026-11-30T12:00:10+00:00"),
        airflow("running", note="rerun after the outage"),
    ),
    # Profiles that ignore nothing: every change is one a viewer sees.
    (
        "replicate-predictions",
        replicate("processing", "Using seed: 1\n"),
        replicate("processing", "Using seed: 1\n"),
        replicate("processing", "Using seed: 1\n 45%|####      | 45/100\n"),
    ),
    (
        "openai-batches",
        openai("in_progress", 100, 23, 1),
        openai("in_progress", 100, 23, 1),
        openai("in_progress", 100, 24, 1),
    ),
    (
        "google-operations",
        google(),
        google(),
        {**google(), "metadata": {"progressPercent": 40}},
    ),
    (
        "azure-operations",
        azure("InProgress"),
        azure("InProgress"),
        azure("InProgress", percentComplete=40),
    ),
    ("jenkins", jenkins(True, None), jenkins(True, None), jenkins(True, "UNSTABLE")),
    (
        "databricks-runs",
        databricks("RUNNING"),
        databricks("RUNNING"),
        {
            **databricks("RUNNING"),
            "tasks": [{"task_key": "ingest", "state": {"life_cycle_state": "RUNNING"}}],
        },
    ),
]


def test_every_profile_has_an_ignore_case() -> None:
    assert {case[0] for case in IGNORE_CASES} == CONTRACT_NAMES


@pytest.mark.parametrize(
    ("name", "base", "ignored_only", "seen"),
    [pytest.param(*case, id=case[0]) for case in IGNORE_CASES],
)
def test_ignored_fields_make_no_change_and_others_do(
    name: str, base: Status, ignored_only: Status, seen: Status
) -> None:
    profile = PROFILES[name]
    assert fingerprint(profile, base) == fingerprint(profile, ignored_only)
    assert fingerprint(profile, base) != fingerprint(profile, seen)
    # Deleting never touches the state the bridge reads.
    assert state_of(profile, fingerprint(profile, base)) == state_of(profile, base)


def test_replicate_logs_growing_is_progress_not_noise() -> None:
    profile = PROFILES["replicate-predictions"]
    assert ".logs" not in profile.ignore_fields
    before = replicate("processing", "Using seed: 1\n")
    after = replicate("processing", "Using seed: 1\nLoading model\n")
    assert fingerprint(profile, before) != fingerprint(profile, after)


# (profile, status, expected progress)
PROGRESS_CASES: list[tuple[str, Status, float | None]] = [
    ("kubernetes-jobs", k8s_job({"active": 2, "succeeded": 2}), 0.4),
    ("kubernetes-jobs", k8s_job({"active": 2}), 0.0),
    ("kubernetes-jobs", {**k8s_job({"succeeded": 3}), "spec": {"parallelism": 2}}, None),
    ("argo-workflows", argo("Running", "1/4"), 0.25),
    ("argo-workflows", argo("Running", "0/0"), None),
    ("azure-operations", azure("InProgress", percentComplete=40.0), 0.4),
    ("azure-operations", azure("InProgress"), None),
    ("openai-batches", openai("in_progress", 100, 23, 1), 0.24),
    ("openai-batches", openai("validating", 0), None),
    (
        "replicate-predictions",
        replicate(
            "processing",
            "Using seed: 1\n 20%|##        | 20/100 [00:01<00:04]\n"
            " 45%|####      | 45/100 [00:02<00:03]\nsaving\n",
        ),
        0.45,
    ),
    ("replicate-predictions", replicate("processing", "Using seed: 1\n"), None),
    ("github-actions", github("in_progress"), None),
    ("gitlab-pipelines", gitlab("running"), None),
    ("google-operations", google(), None),
    ("jenkins", jenkins(True, None), None),
    ("databricks-runs", databricks("RUNNING"), None),
    ("airflow-dag-runs", airflow("running"), None),
]


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [pytest.param(n, s, e, id=f"{n}-{i}") for i, (n, s, e) in enumerate(PROGRESS_CASES)],
)
def test_progress(name: str, status: Status, expected: float | None) -> None:
    got = progress_of(PROFILES[name], status)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


# Empty objects, missing nested objects, nulls and wrong types where each expression
# reaches into the status: nothing may raise, and a state is a string or nothing.
ODD_INPUTS: dict[str, list[Status]] = {
    "github-actions": [
        {},
        {"status": None},
        {"status": None, "conclusion": None},
        {"status": "completed"},
        {"conclusion": "success"},
    ],
    "gitlab-pipelines": [{}, {"status": None}, {"detailed_status": None}],
    "google-operations": [
        {},
        {"done": None},
        {"done": True},
        {"done": True, "error": None},
        {"done": True, "error": {}},
        {"done": True, "error": "boom"},
        {"done": "true"},
        {"metadata": None},
    ],
    "azure-operations": [
        {},
        {"status": None},
        {"percentComplete": None},
        {"percentComplete": "40"},
    ],
    "jenkins": [{}, {"building": None}, {"building": None, "result": None}, {"result": None}],
    "kubernetes-jobs": [
        {},
        {"status": None},
        {"status": {}},
        {"status": "Running"},
        {"status": {"conditions": None}},
        {"status": {"conditions": []}},
        {"status": {"conditions": [None, "Complete", {}, {"type": None, "status": None}]}},
        {"status": {"conditions": {"type": "Complete"}}},
        {"status": {"active": None}},
        {"status": {"active": "2"}},
        {"spec": None, "status": {"succeeded": 1}},
        {"spec": {"completions": 0}, "status": {"succeeded": 1}},
        {"spec": {"completions": "5"}, "status": {"succeeded": 1}},
        {"spec": {"completions": 5}, "status": {"succeeded": None}},
        {"spec": {"completions": 5}, "status": {"succeeded": "1"}},
    ],
    "databricks-runs": [
        {},
        {"state": None},
        {"state": {}},
        {"state": "RUNNING"},
        {"state": {"life_cycle_state": None}},
        {"state": {"result_state": "SUCCESS"}},
        {"state": {"life_cycle_state": "TERMINATED", "result_state": None}},
    ],
    "argo-workflows": [
        {},
        {"status": None},
        {"status": {}},
        {"status": "Running"},
        {"status": {"phase": None, "progress": None}},
        {"status": {"progress": 3}},
        {"status": {"progress": "3/0"}},
        {"status": {"progress": "n/a"}},
        {"metadata": None},
    ],
    "airflow-dag-runs": [{}, {"state": None}, {"last_scheduling_decision": None}],
    "replicate-predictions": [{}, {"status": None}, {"logs": None}, {"logs": 42}, {"logs": ""}],
    "openai-batches": [
        {},
        {"status": None},
        {"request_counts": None},
        {"request_counts": {}},
        {"request_counts": "100"},
        {"request_counts": {"total": 0}},
        {"request_counts": {"total": "100", "completed": 1}},
        {"request_counts": {"total": 100, "completed": None, "failed": None}},
    ],
}


def detail_of(profile: Profile, status: Status) -> str | None:
    from bridge.polling.status import StatusReader

    reader = StatusReader(
        state_expr=profile.state_expr,
        success=profile.success,
        failure=profile.failure,
        detail_expr=profile.detail_expr,
    )
    reading = reader.read(status)
    assert reading.detail_problem is None, reading.detail_problem
    return reading.detail


def _k8s_failed() -> Status:
    job = k8s_job({"failed": 7})
    job["status"]["conditions"] = [
        {
            "type": "FailureTarget",
            "status": "True",
            "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        },
        {
            "type": "Failed",
            "status": "True",
            "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        },
    ]
    return job


# (profile, status, expected detail): each field as the API documents it (profiles.py).
DETAIL_CASES: list[tuple[str, Status, str | None]] = [
    (
        "google-operations",
        google(done=True, error={"code": 3, "message": "Bad image"}),
        "Bad image",
    ),
    ("google-operations", google(), None),
    (
        "azure-operations",
        azure("Failed", error={"code": "Quota", "message": "Over quota"}),
        "Over quota",
    ),
    ("azure-operations", azure("InProgress"), None),
    ("kubernetes-jobs", _k8s_failed(), "Job has reached the specified backoff limit"),
    ("kubernetes-jobs", k8s_job({"active": 2}), None),
    (
        "databricks-runs",
        {
            **databricks("TERMINATED", "FAILED"),
            "state": {
                "life_cycle_state": "TERMINATED",
                "result_state": "FAILED",
                "state_message": "Task x failed with message: boom",
            },
        },
        "Task x failed with message: boom",
    ),
    ("databricks-runs", databricks("RUNNING"), None),  # "" says nothing
    (
        "argo-workflows",
        {**argo("Failed"), "status": {"phase": "Failed", "message": "child 'x' failed"}},
        "child 'x' failed",
    ),
    ("argo-workflows", argo("Running"), None),
    (
        "replicate-predictions",
        replicate("failed", error="CUDA out of memory"),
        "CUDA out of memory",
    ),
    ("replicate-predictions", replicate("processing"), None),
    (
        "openai-batches",
        {
            **openai("failed"),
            "errors": {
                "object": "list",
                "data": [
                    {
                        "code": "invalid_json_line",
                        "line": 3,
                        "message": "Line 3 is not JSON",
                        "param": None,
                    }
                ],
            },
        },
        "Line 3 is not JSON",
    ),
    ("openai-batches", openai("in_progress"), None),
]


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [pytest.param(n, s, e, id=f"{n}-{i}") for i, (n, s, e) in enumerate(DETAIL_CASES)],
)
def test_detail(name: str, status: Status, expected: str | None) -> None:
    assert detail_of(PROFILES[name], status) == expected


def test_a_profile_sets_a_detail_only_where_its_api_documents_one() -> None:
    with_detail = {n for n, p in PROFILES.items() if p.detail_expr is not None}
    assert with_detail == {n for n, _, _ in DETAIL_CASES}
    # No documented message or stage field in these run objects.
    assert not with_detail & {"github-actions", "gitlab-pipelines", "jenkins", "airflow-dag-runs"}


def test_every_profile_has_odd_inputs() -> None:
    assert set(ODD_INPUTS) == CONTRACT_NAMES


@pytest.mark.parametrize(
    ("name", "status"),
    [
        pytest.param(name, status, id=f"{name}-{i}")
        for name, statuses in ODD_INPUTS.items()
        for i, status in enumerate(statuses)
    ],
)
def test_odd_inputs_never_raise(name: str, status: Status) -> None:
    profile = PROFILES[name]
    states = jq.compile(profile.state_expr).input_value(status).all()
    assert not states or states[0] is None or isinstance(states[0], str)
    if profile.progress_expr is not None:
        progress = jq.compile(profile.progress_expr).input_value(status).all()
        assert not progress or progress[0] is None or isinstance(progress[0], int | float)
    if profile.ignore_fields:
        jq.compile("del(" + ", ".join(profile.ignore_fields) + ")").input_value(status).first()
    if profile.detail_expr is not None:
        details = jq.compile(profile.detail_expr).input_value(status).all()
        assert not details or isinstance(details[0], str)


def test_no_odd_input_ends_a_run() -> None:
    """An empty or broken status is never read as an outcome (the stream must not end
    on garbage): it yields no state, or one in progress."""
    for name, statuses in ODD_INPUTS.items():
        profile = PROFILES[name]
        for status in (s for s in statuses if not s):
            assert bucket(profile, state_of(profile, status)) == "in_progress", name
