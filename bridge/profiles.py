"""BRIDGE_PROFILE presets: the state expression, state lists, ignored fields, progress
and detail expressions and static headers of eleven well-known run APIs.

Each preset was checked against the API's published documentation (the ``docs`` URLs);
every state those pages document is placed on purpose in ``success``, ``failure`` or
``in_progress``. The rule behind the placements: a stream must end on every state the run
cannot leave by itself, because a terminal state left "in progress" keeps the viewer's
stream open until BRIDGE_STREAM_TIMEOUT. A terminal state that is not plainly a success
(skipped, neutral, expired, unstable, ...) goes where the API's own merge gates and
clients put it, and its comment says why. The ``error`` event still carries the whole
status, so a client can always tell ``cancelled`` from ``failure``.

Where the API has them, a profile also reads its list of runs (``fleet``: BRIDGE_LIST_*,
for BRIDGE_UPSTREAM_LIST_PATH) or a run's event feed (``feed``: BRIDGE_FEED_*, for
BRIDGE_FEED_PATH), checked against the same kind of pages; the paths stay the operator's.

A profile never sets the URL or the run path (``example_run_path`` is documentation) and
never a credential: ``upstream_headers`` holds only static protocol headers. Explicitly
set BRIDGE_* variables win over a profile (bridge/settings.py applies it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Fleet:
    """How the API lists runs: BRIDGE_LIST_ITEMS and BRIDGE_LIST_ID."""

    items: str
    id: str
    #: An example BRIDGE_UPSTREAM_LIST_PATH (documentation, never set by the profile).
    example_path: str

    def settings(self) -> dict[str, str]:
        return {"list_items": self.items, "list_id": self.id}


@dataclass(frozen=True, slots=True)
class Feed:
    """How the API's feed of a run's events reads: the BRIDGE_FEED_* filters."""

    items: str
    cursor: str
    event: str
    #: An example BRIDGE_FEED_PATH (documentation, never set by the profile).
    example_path: str
    data: str = "."
    more: str | None = None
    start: str = "0"

    def settings(self) -> dict[str, str]:
        found = {
            "feed_items": self.items,
            "feed_cursor": self.cursor,
            "feed_event": self.event,
            "feed_data": self.data,
            "feed_start": self.start,
        }
        if self.more is not None:
            found["feed_more"] = self.more
        return found


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    #: One line: which API and endpoint.
    summary: str
    #: The pages the states below were checked against.
    docs: tuple[str, ...]
    #: jq filter whose first output is the run's state (null or nothing: still going).
    state_expr: str
    success: tuple[str, ...]
    failure: tuple[str, ...]
    #: Documented states that are neither, listed on purpose (any unlisted state is
    #: treated the same way: the stream stays open).
    in_progress: tuple[str, ...]
    #: jq paths deleted before two statuses are compared (never shown to be gone:
    #: events carry the whole status).
    ignore_fields: tuple[str, ...] = ()
    #: jq filter giving 0..1, only where the API documents something sound.
    progress_expr: str | None = None
    #: jq filter giving one line of detail (a message, the current step), only where the
    #: API documents such a field.
    detail_expr: str | None = None
    #: Static headers the API asks for; read-only, never a credential.
    upstream_headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS, hash=False)
    #: An example BRIDGE_UPSTREAM_RUN_PATH (upper-case words are the operator's to fill).
    example_run_path: str = "/runs/{run_id}"
    #: The API's list of runs, where it has one that carries each run's status.
    fleet: Fleet | None = None
    #: The API's feed of a run's events, where it has one.
    feed: Feed | None = None


# GitHub Actions, GET /repos/{owner}/{repo}/actions/runs/{run_id}.
# Checked: docs.github.com "Workflow run statuses and conclusions" (status values
# requested/queued/pending/waiting/in_progress/completed; conclusions success, failure,
# neutral, cancelled, timed_out, action_required, skipped, stale, startup_failure; the
# conclusion is null until completed); the REST page for the endpoint and its headers;
# "Using conditions to control job execution" ("A job that is skipped will report its
# status as Success. It will not prevent a pull request from merging", read as quoted
# from that page, not the page itself).
GITHUB_ACTIONS = Profile(
    name="github-actions",
    summary="GitHub Actions workflow runs (REST: GET /repos/{owner}/{repo}/actions/runs/{id})",
    docs=(
        "https://docs.github.com/en/actions/reference/workflows-and-actions/workflow-run-statuses",
        "https://docs.github.com/en/rest/actions/workflow-runs#get-a-workflow-run",
        "https://docs.github.com/en/rest/actions/workflow-runs#list-workflow-runs-for-a-repository",
        "https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api",
        "https://docs.github.com/en/actions/writing-workflows/choosing-when-your-workflow-runs/using-conditions-to-control-job-execution",
    ),
    # The outcome lives in `conclusion` once `status` is completed; a completed run
    # without a conclusion (undocumented) yields null and is polled again.
    state_expr='if .status? == "completed" then .conclusion? else .status? end',
    # neutral: "completed with a neutral result", nothing failed. skipped: GitHub itself
    # reports a skipped job as Success and lets it satisfy a required check.
    success=("success", "neutral", "skipped"),
    # action_required: the run completed without doing its work and waits on a person
    # (an approval starts a new attempt, which a new stream follows). stale and
    # startup_failure never did the work either; timed_out and cancelled stopped it.
    failure=("failure", "cancelled", "timed_out", "action_required", "stale", "startup_failure"),
    in_progress=("requested", "queued", "pending", "waiting", "in_progress"),
    # updated_at moves whenever a job inside the run progresses, which the run object
    # does not show: alone it would make events in which nothing visible changed.
    ignore_fields=(".updated_at",),
    # The run object documents no progress (per-job detail is another endpoint).
    progress_expr=None,
    upstream_headers=MappingProxyType(
        {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    ),
    example_run_path="/repos/OWNER/REPO/actions/runs/{run_id}",
    # "List workflow runs for a repository": {total_count, workflow_runs: [workflow-run]},
    # each item the same workflow-run object as the run's own endpoint; `status` narrows
    # it to one status or conclusion, `per_page` is at most 100, and further pages come by
    # the Link header's rel="next" ("Using pagination in the REST API").
    fleet=Fleet(
        items=".workflow_runs[]",
        id=".id",
        example_path="/repos/OWNER/REPO/actions/runs?status=in_progress&per_page=100",
    ),
)

# GitLab CI/CD, GET /api/v4/projects/:id/pipelines/:pipeline_id.
# Checked: docs.gitlab.com Pipelines API (status one of created, waiting_for_resource,
# preparing, pending, running, success, failed, canceled, skipped, manual, scheduled) and
# "Auto-merge: allow merge after skipped pipelines" (with "Pipelines must succeed",
# skipped pipelines prevent merging unless a project opts in).
GITLAB_PIPELINES = Profile(
    name="gitlab-pipelines",
    summary="GitLab CI/CD pipelines (REST: GET /api/v4/projects/:id/pipelines/:pipeline_id)",
    docs=(
        "https://docs.gitlab.com/api/pipelines/",
        "https://docs.gitlab.com/user/project/merge_requests/auto_merge/#allow-merge-after-skipped-pipelines",
    ),
    state_expr=".status",
    success=("success",),
    # skipped: terminal, and by default GitLab does not count it as a passing pipeline
    # (it blocks merge until a project opts in), so a waiting client must not proceed.
    failure=("failed", "canceled", "skipped"),
    # manual and scheduled are paused, not finished: a person (or a delayed job's timer)
    # moves them on, and GitLab does not count them as completed. If nobody acts the
    # stream ends with `timeout`, which is the honest answer.
    in_progress=(
        "created",
        "waiting_for_resource",
        "preparing",
        "pending",
        "running",
        "manual",
        "scheduled",
    ),
    # updated_at is touched whenever the pipeline's jobs change; the pipeline object
    # shows no per-job detail, so alone it would make events that show nothing new.
    ignore_fields=(".updated_at",),
    progress_expr=None,
    example_run_path="/api/v4/projects/PROJECT_ID/pipelines/{run_id}",
)

# Google long-running operations (google.longrunning.Operation), GET .../operations/{id}.
# Checked: googleapis operations.proto ("If the value is false, it means the operation
# is still in progress. If true, the operation is completed, and either error or response
# is available"; CancelOperation leaves "an Operation.error value with a
# google.rpc.Status.code of 1, corresponding to Code.CANCELLED").
GOOGLE_OPERATIONS = Profile(
    name="google-operations",
    summary="Google Cloud long-running operations (google.longrunning.Operation)",
    docs=(
        "https://github.com/googleapis/googleapis/blob/master/google/longrunning/operations.proto",
        "https://cloud.google.com/ruby/docs/reference/google-cloud-run-v2/latest/Google-Longrunning-Operation",
    ),
    # There is no state string: `done` plus `error` decide. JSON omits `done: false`
    # (proto3 default), so an absent `done` is "running". Code 1 is a cancellation.
    state_expr=(
        'if .done? == true then (if .error? == null then "succeeded" '
        'elif (.error.code? // 0) == 1 then "cancelled" else "failed" end) '
        'else "running" end'
    ),
    success=("succeeded",),
    failure=("failed", "cancelled"),
    in_progress=("running",),
    # The generic Operation has no timestamp of its own; `metadata` is service-specific
    # (and typically *is* the progress), so nothing is ignored by default.
    ignore_fields=(),
    # Progress lives in each service's own metadata type (no common field): set
    # BRIDGE_PROGRESS_EXPR per service, e.g. `.metadata.progressPercent / 100`.
    progress_expr=None,
    # `error` is a google.rpc.Status, "the error result of the operation in case of
    # failure or cancellation", whose `message` is its sentence (operations.proto; also
    # https://cloud.google.com/php/docs/reference/longrunning/0.4.1/LongRunning.Operation).
    detail_expr=".error.message? | strings",
    example_run_path="/v1/projects/PROJECT/locations/LOCATION/operations/{run_id}",
)

# Azure Resource Manager asynchronous operations (the Azure-AsyncOperation URL).
# Checked: learn.microsoft.com "Track asynchronous Azure operations": the body always has
# `status`; Succeeded, Failed and Canceled mean finished, "all other values indicate the
# operation is still running" (examples: InProgress, Running, Accepted); `percentComplete`
# is a double between 0 and 100; `error` comes with Failed or Canceled.
AZURE_OPERATIONS = Profile(
    name="azure-operations",
    summary="Azure Resource Manager async operation status (the Azure-AsyncOperation URL)",
    docs=(
        "https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/async-operations",
    ),
    state_expr=".status",
    success=("Succeeded",),
    failure=("Failed", "Canceled"),
    # Providers may return their own in-progress values; unlisted ones count the same.
    in_progress=("InProgress", "Running", "Accepted"),
    # The documented body has no field that changes without the operation changing.
    ignore_fields=(),
    progress_expr=".percentComplete? | numbers | . / 100",
    # "If the asynchronous operation failed, the response body includes ... error
    # information regarding the failure": `error` with `code` and `message` (the page
    # above; https://learn.microsoft.com/en-us/javascript/api/@azure/arm-network/azureasyncoperationresult).
    detail_expr=".error.message? | strings",
    example_run_path=(
        "/subscriptions/SUBSCRIPTION_ID/providers/PROVIDER_NAMESPACE/locations/LOCATION"
        "/operationStatuses/{run_id}?api-version=API_VERSION"
    ),
)

# Jenkins build JSON, GET /job/<name>/<number>/api/json.
# Checked: hudson.model.Result (SUCCESS "no errors", UNSTABLE "some errors but they were
# not fatal. For example, some tests failed", FAILURE "a fatal error", NOT_BUILT "the
# module was not built", ABORTED "manually aborted") and the build's isBuilding/getResult
# ("When a build is in progress, this method returns an intermediate result"), both read
# in the Jenkins core sources those javadoc pages render. The JSON carries the same
# exported properties (`building`, `result`); the jenkins.io remote-access-api book page
# was not returned by the search tool.
JENKINS = Profile(
    name="jenkins",
    summary="Jenkins builds (remote access API: GET /job/<name>/<number>/api/json)",
    docs=(
        "https://javadoc.jenkins.io/hudson/model/Result.html",
        "https://javadoc.jenkins.io/jenkins/model/HistoricalBuild.html",
    ),
    # `result` may be set while the build still runs (a pipeline step can mark it
    # FAILURE or UNSTABLE and carry on), so `building` decides first: "BUILDING" is a
    # state of the bridge's naming, after that field.
    state_expr='if .building? == true then "BUILDING" else .result? end',
    success=("SUCCESS",),
    # UNSTABLE: built, but tests (or another quality gate) failed; a client waiting for
    # "did it pass?" must not read that as a pass. NOT_BUILT: nothing was built.
    failure=("FAILURE", "UNSTABLE", "ABORTED", "NOT_BUILT"),
    in_progress=("BUILDING",),
    # The build JSON does not change while building except when the build does.
    ignore_fields=(),
    # No sound progress: Jenkins' own bar is (now - timestamp) / estimatedDuration, a
    # function of the clock rather than of the status, and the bridge reads progress
    # only when a status changes (so it would stay frozen) - plus clock skew.
    progress_expr=None,
    example_run_path="/job/JOB_NAME/{run_id}/api/json",
)

# Kubernetes Jobs, GET /apis/batch/v1/namespaces/<ns>/jobs/<name>.
# Checked: kubernetes.io "Jobs": terminal conditions Complete (succeeded) and Failed
# (failed), added only after all Pods terminated (v1.31+); FailureTarget and
# SuccessCriteriaMet are added first to trigger that termination; a Suspended condition
# with status "True" means suspended (read in kubernetes/website's job.md). JobStatus:
# `active` is "the number of pending and running pods"; `completions` the desired number
# of successfully finished pods. ObjectMeta: managedFields "is mostly for internal
# housekeeping" (both read as the API's OpenAPI descriptions, which those pages render).
KUBERNETES_JOBS = Profile(
    name="kubernetes-jobs",
    summary="Kubernetes batch/v1 Jobs (GET /apis/batch/v1/namespaces/<ns>/jobs/<name>)",
    docs=(
        "https://kubernetes.io/docs/concepts/workloads/controllers/job/#terminal-job-conditions",
        "https://kubernetes.io/docs/concepts/workloads/controllers/job/#termination-of-job-pods",
        "https://kubernetes.io/docs/concepts/workloads/controllers/job/#suspending-a-job",
        "https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/job-v1/#JobStatus",
        "https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/",
    ),
    # The state is the condition types whose status is "True", most final first; with
    # none, "Active" while `active` counts pods, else null (nothing to say yet).
    state_expr=(
        '[(.status.conditions? // [])[]? | select((.status? // "") == "True") | .type?] as $t'
        ' | if ($t | any(. == "Failed")) then "Failed"'
        ' elif ($t | any(. == "Complete")) then "Complete"'
        ' elif ($t | any(. == "FailureTarget")) then "FailureTarget"'
        ' elif ($t | any(. == "SuccessCriteriaMet")) then "SuccessCriteriaMet"'
        ' elif ($t | any(. == "Suspended")) then "Suspended"'
        ' elif ((.status.active? // 0) | numbers) > 0 then "Active"'
        " else null end"
    ),
    success=("Complete",),
    failure=("Failed",),
    # FailureTarget and SuccessCriteriaMet already tell the outcome, but the terminal
    # condition always follows once the Pods are gone; waiting for it makes the final
    # event carry the final Job (completionTime, counts). Suspended is paused.
    in_progress=("Active", "Suspended", "SuccessCriteriaMet", "FailureTarget"),
    # Both change on every write by any controller (the Job controller counting ready
    # Pods, a label added by a tool); they are bookkeeping, not the run.
    ignore_fields=(".metadata.resourceVersion", ".metadata.managedFields"),
    # Succeeded Pods out of the desired completions, where completions is set.
    progress_expr=(
        "(.spec.completions? | numbers) as $n"
        " | if $n > 0 then (((.status.succeeded? // 0) | numbers) / $n) else empty end"
    ),
    # JobCondition.message: "Human readable message indicating details about last
    # transition" (JobStatus above), of the last condition that holds; its `reason` (a
    # word such as BackoffLimitExceeded) where there is no message.
    detail_expr=(
        '[(.status.conditions? // [])[]? | select((.status? // "") == "True")'
        ' | (.message? // .reason?) | strings | select(. != "")] | last // empty'
    ),
    example_run_path="/apis/batch/v1/namespaces/NAMESPACE/jobs/{run_id}",
)

# Databricks Jobs API 2.1, GET /api/2.1/jobs/runs/get?run_id=<id>.
# Checked: the Databricks SDK reference generated from the Jobs API (RunLifeCycleState:
# QUEUED, PENDING, RUNNING, TERMINATING, TERMINATED "terminal", SKIPPED "terminal",
# INTERNAL_ERROR "terminal", BLOCKED, WAITING_FOR_RETRY; RunResultState "only available
# for terminal lifecycle states": SUCCESS, FAILED, TIMEDOUT, CANCELED,
# MAXIMUM_CONCURRENT_RUNS_REACHED, EXCLUDED, SUCCESS_WITH_FAILURES, UPSTREAM_FAILED,
# UPSTREAM_CANCELED, DISABLED). The search tool did not return the official page
# (docs.databricks.com/api/workspace/jobs/getrun); the SDK pages carry the API's own
# descriptions of the two fields.
DATABRICKS_RUNS = Profile(
    name="databricks-runs",
    summary="Databricks job runs (Jobs API 2.1: GET /api/2.1/jobs/runs/get?run_id=<id>)",
    docs=(
        "https://databricks.github.io/sdk-js/api/variables/_databricks_sdk-jobs.v2.RunLifeCycleState_RunLifeCycleState.html",
        "https://databricks.github.io/sdk-js/api/types/_databricks_sdk-jobs.v2.RunResultState_RunResultState.html",
        "https://databricks.github.io/sdk-js/api/interfaces/_databricks_sdk-jobs.v2.RunState.html",
    ),
    # The result only counts once the life cycle is TERMINATED (result_state may show
    # during TERMINATING); SKIPPED and INTERNAL_ERROR are terminal life cycle states in
    # their own right. A TERMINATED run without a result (undocumented) stays distinct.
    state_expr=(
        "(.state? // {}) as $s | ($s.life_cycle_state? // null) as $l"
        ' | if $l == "TERMINATED" then ($s.result_state? // "TERMINATED") else $l end'
    ),
    # SUCCESS_WITH_FAILURES: "completed successfully with some failures; leaf tasks were
    # successful" - the job's author allowed those failures. EXCLUDED: skipped because
    # its run-if conditions were not met, which is the designed path (like GitHub's
    # skipped).
    success=("SUCCESS", "SUCCESS_WITH_FAILURES", "EXCLUDED"),
    # The skips that mean "the work did not happen" are failures: concurrency limits
    # (MAXIMUM_CONCURRENT_RUNS_REACHED, life cycle SKIPPED), upstream failures, a user
    # disabling it. INTERNAL_ERROR is the Jobs service failing. TERMINATED without a
    # result cannot be called a success, and the stream must end.
    failure=(
        "FAILED",
        "TIMEDOUT",
        "CANCELED",
        "MAXIMUM_CONCURRENT_RUNS_REACHED",
        "UPSTREAM_FAILED",
        "UPSTREAM_CANCELED",
        "DISABLED",
        "SKIPPED",
        "INTERNAL_ERROR",
        "TERMINATED",
    ),
    in_progress=("QUEUED", "PENDING", "RUNNING", "TERMINATING", "BLOCKED", "WAITING_FOR_RETRY"),
    ignore_fields=(),
    progress_expr=None,
    # RunState.state_message: "A descriptive message for the current state" (the RunState
    # page above), e.g. why the run failed.
    detail_expr=".state.state_message? | strings",
    example_run_path="/api/2.1/jobs/runs/get?run_id={run_id}",
)

# Argo Workflows server, GET /api/v1/workflows/<namespace>/<name>.
# Checked: argo-workflows.readthedocs.io field reference, WorkflowStatus: phase "Will be
# "" (Unknown), "Pending", or "Running" before the workflow is completed, and
# "Succeeded", "Failed" or "Error" once the workflow has completed"; progress "Progress
# to completion" (N/M). A Workflow carries Kubernetes ObjectMeta.
ARGO_WORKFLOWS = Profile(
    name="argo-workflows",
    summary="Argo Workflows (server API: GET /api/v1/workflows/<namespace>/<name>)",
    docs=(
        "https://argo-workflows.readthedocs.io/en/latest/fields/#workflowstatus",
        "https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/",
    ),
    state_expr=".status.phase?",
    success=("Succeeded",),
    # Error: the workflow ended because of an error in the workflow itself or the
    # controller, not a step's exit code; it is just as final as Failed.
    failure=("Failed", "Error"),
    # "" (Unknown) is also "before completion"; an empty state needs no listing.
    in_progress=("Pending", "Running"),
    # Kubernetes write bookkeeping, as for Jobs.
    ignore_fields=(".metadata.resourceVersion", ".metadata.managedFields"),
    progress_expr=(
        '(.status.progress? // "") | strings | capture("^(?<d>\\\\d+)/(?<t>\\\\d+)$")?'
        " | (.t | tonumber) as $t | if $t > 0 then (.d | tonumber) / $t else empty end"
    ),
    # WorkflowStatus.message: "A human readable message indicating details about why the
    # workflow is in this condition" (the field reference above).
    detail_expr=".status.message? | strings",
    example_run_path="/api/v1/workflows/NAMESPACE/{run_id}",
)

# Apache Airflow stable REST API, GET /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}.
# Checked: the stable REST API reference, DAGRun.state is a DagState: queued, running,
# success, failed ("Changed in version 2.1.3: 'queued' is added", read as the spec's text
# in the generated API client); DAGRun carries `last_scheduling_decision`, which
# DagRun.update_state (airflow/models/dagrun.py) sets to now on every scheduler loop that
# examines a running run.
AIRFLOW_DAG_RUNS = Profile(
    name="airflow-dag-runs",
    summary="Apache Airflow DAG runs (stable REST API: GET /api/v1/dags/<dag>/dagRuns/<run>)",
    docs=(
        "https://airflow.apache.org/docs/apache-airflow/stable/stable-rest-api-ref.html#operation/get_dag_run",
        "https://airflow.apache.org/docs/apache-airflow/stable/stable-rest-api-ref.html#operation/get_dag_runs",
        "https://github.com/apache/airflow/blob/v2-10-stable/airflow/models/dagrun.py",
    ),
    state_expr=".state",
    success=("success",),
    failure=("failed",),
    in_progress=("queued", "running"),
    # The scheduler rewrites it every loop (seconds apart) while the run is running.
    ignore_fields=(".last_scheduling_decision",),
    # A DAG run documents no progress (task instances are another endpoint).
    progress_expr=None,
    # Airflow 3 serves the same resource under /api/v2/.
    example_run_path="/api/v1/dags/DAG_ID/dagRuns/{run_id}",
    # "List DAG runs": a DAGRunCollection {dag_runs: [DAGRun], total_entries}, each item
    # the run's own DAGRun object; `state` filters, `limit`/`offset` page (no Link header:
    # one page per interval, so keep `limit` above the runs going at once).
    fleet=Fleet(
        items=".dag_runs[]",
        id=".dag_run_id",
        example_path="/api/v1/dags/DAG_ID/dagRuns?state=running&limit=100",
    ),
)

# Replicate predictions, GET /v1/predictions/{prediction_id}.
# Checked: replicate.com "Prediction lifecycle" (starting, processing, succeeded, failed,
# canceled "canceled by the user or exceeded its deadline after starting", aborted
# "exceeded its deadline before it could start running"), the HTTP API reference for the
# prediction object (logs, metrics only on terminated predictions), and replicate-python's
# Prediction.progress (a tqdm bar read from the logs).
REPLICATE_PREDICTIONS = Profile(
    name="replicate-predictions",
    summary="Replicate predictions (HTTP API: GET /v1/predictions/{prediction_id})",
    docs=(
        "https://replicate.com/docs/topics/predictions/lifecycle",
        "https://replicate.com/docs/reference/http#predictions.get",
        "https://github.com/replicate/replicate-python/blob/main/replicate/prediction.py",
    ),
    state_expr=".status",
    success=("succeeded",),
    # aborted is newer than most clients: the deadline passed before the prediction
    # started. Left out, it would hold the stream open until the timeout.
    failure=("failed", "canceled", "aborted"),
    in_progress=("starting", "processing"),
    # Nothing: `logs` grows while the model runs and that growth is the progress a
    # viewer watches; `metrics` appears only once the prediction ended.
    ignore_fields=(),
    # Replicate's own client reads progress from the last tqdm bar in the logs
    # ("45%|####      | 45/100"); models that print none give no progress.
    progress_expr=(
        '[(.logs? // "") | strings | splits("\\n")'
        ' | capture("^\\\\s*(?<p>\\\\d+)%\\\\s*\\\\|.+?\\\\|\\\\s*(?<c>\\\\d+)/(?<t>\\\\d+)")?]'
        " | last | if . == null then empty else (.p | tonumber) / 100 end"
    ),
    # The prediction's `error`: its error message when it failed (the HTTP API reference
    # above; a string, as replicate-python's Prediction.error has it).
    detail_expr=".error? | strings",
    example_run_path="/v1/predictions/{run_id}",
)

# OpenAI Batch API, GET /v1/batches/{batch_id}.
# Checked: the Batch guide's status table, read through a verbatim copy (validating,
# failed "the input file has failed the validation process", in_progress, finalizing,
# completed, expired "not able to be completed within the 24-hour time window",
# cancelling "may take up to 10 minutes", cancelled) and the batch object
# (request_counts total/completed/failed), read through the openai-python types
# generated from OpenAI's spec.
OPENAI_BATCHES = Profile(
    name="openai-batches",
    summary="OpenAI batches (GET /v1/batches/{batch_id})",
    docs=(
        "https://platform.openai.com/docs/guides/batch",
        "https://platform.openai.com/docs/api-reference/batch/object",
        "https://github.com/openai/openai-python/blob/main/src/openai/types/batch.py",
    ),
    state_expr=".status",
    success=("completed",),
    # expired: the window closed with work undone (finished requests are in the output
    # file, the rest are not): not what the caller asked for.
    failure=("failed", "expired", "cancelled"),
    in_progress=("validating", "in_progress", "finalizing", "cancelling"),
    # request_counts and the *_at timestamps change only when the batch does.
    ignore_fields=(),
    # Requests finished (completed or failed) out of the total, once the total is known.
    progress_expr=(
        "(.request_counts? // {}) as $c | ($c.total? | numbers) as $t"
        " | if $t > 0 then ((($c.completed? // 0) + ($c.failed? // 0)) / $t) else empty end"
    ),
    # errors.data[].message: "A human-readable message providing more details about the
    # error" (the batch object above; e.g. why validation failed).
    detail_expr=".errors?.data?[0]?.message? | strings",
    example_run_path="/v1/batches/{run_id}",
)

# Apache Livy batches, GET /batches/{batchId}; their log as the run's feed.
# Checked: the Livy REST API page (GET /batches/{batchId}/state: id, state; GET
# /batches/{batchId}/log: request `from` "offset into log file", `size` "max number of log
# lines to return"; response id, from, size, log "list of strings"; session states
# not_started, starting, recovering, idle, running, busy, shutting_down, error, dead,
# killed, success) and Cloudera's Livy batch API reference, which repeats it. A log line
# has no cursor of its own: its place in the log (`from` plus its index, plus one) is,
# which is also the next request's `from`. The log page says nothing of the state, so the
# bridge asks /batches/{id} too (BRIDGE_UPSTREAM_RUN_PATH).
LIVY_BATCHES = Profile(
    name="livy-batches",
    summary="Apache Livy batches, their log as a feed (REST: GET /batches/{batchId}/log)",
    docs=(
        "https://livy.apache.org/docs/latest/rest-api.html",
        "https://docs.cloudera.com/runtime/latest/running-spark-applications/topics/spark-livy-api-reference-batch-jobs.html",
    ),
    state_expr=".state",
    success=("success",),
    # error: the batch failed to start or run; dead: it died; killed: it was stopped.
    failure=("error", "dead", "killed"),
    # idle and busy are an interactive session's words, listed for a batch too.
    in_progress=(
        "not_started",
        "starting",
        "recovering",
        "idle",
        "running",
        "busy",
        "shutting_down",
    ),
    example_run_path="/batches/{run_id}",
    feed=Feed(
        items=".from as $f | .log | to_entries[] | {offset: ($f + .key + 1), line: .value}",
        cursor=".offset",
        event='"log"',
        example_path="/batches/{run_id}/log?from={cursor}&size=1000",
    ),
)

PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        p.name: p
        for p in (
            GITHUB_ACTIONS,
            GITLAB_PIPELINES,
            GOOGLE_OPERATIONS,
            AZURE_OPERATIONS,
            JENKINS,
            KUBERNETES_JOBS,
            DATABRICKS_RUNS,
            ARGO_WORKFLOWS,
            AIRFLOW_DAG_RUNS,
            REPLICATE_PREDICTIONS,
            OPENAI_BATCHES,
            LIVY_BATCHES,
        )
    }
)


def _one_line(expr: str) -> str:
    return " ".join(expr.split())


def _described(settings: Mapping[str, str]) -> list[str]:
    return [
        f"  {'BRIDGE_' + name.upper():<24} {_one_line(value)}" for name, value in settings.items()
    ]


def describe(profile: Profile) -> str:
    """What a profile sets, for `sse-bridge profiles` (several short lines)."""
    headers = "; ".join(f"{k}: {v}" for k, v in profile.upstream_headers.items())
    lines = [
        f"{profile.name}: {profile.summary}",
        f"  BRIDGE_STATE_EXPR        {_one_line(profile.state_expr)}",
        f"  BRIDGE_SUCCESS_STATUSES  {','.join(profile.success)}",
        f"  BRIDGE_FAILURE_STATUSES  {','.join(profile.failure)}",
        f"  in progress              {','.join(profile.in_progress) or '(none listed)'}",
        f"  BRIDGE_IGNORE_FIELDS     {','.join(profile.ignore_fields) or '(none)'}",
        "  BRIDGE_PROGRESS_EXPR     "
        + (_one_line(profile.progress_expr) if profile.progress_expr else "(none)"),
        "  BRIDGE_DETAIL_EXPR       "
        + (_one_line(profile.detail_expr) if profile.detail_expr else "(none)"),
        f"  BRIDGE_UPSTREAM_HEADERS  {headers or '(none)'}",
        f"  run path, for example    BRIDGE_UPSTREAM_RUN_PATH={profile.example_run_path}"
        " (not set by the profile)",
        *_described(profile.fleet.settings() if profile.fleet else {}),
        *(
            [
                f"  list, for example        BRIDGE_UPSTREAM_LIST_PATH={profile.fleet.example_path}"
                " (not set by the profile)"
            ]
            if profile.fleet
            else []
        ),
        *_described(profile.feed.settings() if profile.feed else {}),
        *(
            [
                f"  feed, for example        BRIDGE_FEED_PATH={profile.feed.example_path}"
                " (not set by the profile)"
            ]
            if profile.feed
            else []
        ),
        *(f"  checked against          {url}" for url in profile.docs),
    ]
    return "\n".join(lines)
