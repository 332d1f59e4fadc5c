"""The deployment files: deploy/kubernetes, the Dockerfile and .dockerignore.

No cluster and no Docker engine are needed (this machine has neither):

- Every Kubernetes manifest, as kustomize renders it (base and the Redis overlay), is
  validated against the Kubernetes API schemas that the ``kubernetes-validate`` package
  ships (offline, strict: an unknown or misspelt field fails), for the oldest and newest
  Kubernetes versions the manifests claim. The overlays are rendered here by a small
  renderer of the kustomize features they use; where ``kubectl`` is installed (it is on
  this project's machines), its own ``kubectl kustomize`` must render the same objects.
- The numbers agree with the bridge: the ConfigMap is read by ``bridge.settings`` as the
  container will read it, and the grace period, preStop, probes, ports, user and memory
  must fit those settings and the measured figures in bench/RESULTS.md and
  bench/results/issue8-before-after.md.
- The Dockerfile's instructions are parsed and checked (sources, lock, user, port), the
  build context is computed from .dockerignore with Docker's own matching rules, and the
  HEALTHCHECK command is run by hand against a served bridge process.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from bridge import __version__
from bridge.cli import build_parser
from bridge.settings import Settings, load, unknown_variables
from tests.support import loopback_socket, serve_process
from tests.test_tls import make_certificate

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
#: The kustomizations a user applies (`kubectl apply -k`): one replica, and three with Redis.
KUSTOMIZATIONS = ["base", "redis"]
#: The oldest Kubernetes the manifests are written for (the preStop `sleep` action is on by
#: default from 1.30) and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
#: Seconds left after the bridge's own deadline before the kubelet's SIGKILL: Python's
#: teardown after Hypercorn returns (pollers, Redis connections) takes well under that.
GRACE_MARGIN = 2.0


# --- kustomize, the little of it the manifests use --------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as file:
        return [doc for doc in yaml.safe_load_all(file) if doc]


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any], where: str) -> None:
    """A strategic merge patch made only of maps: the same as kustomize's result.

    A list in the patch must be new to the target: merging two lists is where a strategic
    merge differs from a plain one (by ``name`` keys), and this renderer does not do it.
    """
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge_patch(target[key], value, f"{where}.{key}")
        else:
            assert not (isinstance(value, list) and key in target), (
                f"{where}.{key}: a list patched onto a list needs kustomize's strategic merge"
            )
            target[key] = copy.deepcopy(value)


def render(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize directory` gives, for resources and map-only patches."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    assert not unknown, f"{directory}: this test's renderer does not know {sorted(unknown)}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects += render(path) if path.is_dir() else yaml_documents(path)
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"{directory}: only `path:` patches are rendered here"
        for change in yaml_documents(directory / patch["path"]):
            key = (change["kind"], change["metadata"]["name"])
            targets = [o for o in objects if (o["kind"], o["metadata"]["name"]) == key]
            assert len(targets) == 1, f"{patch['path']}: {key} matches {len(targets)} objects"
            merge_patch(targets[0], change, f"{patch['path']}:{key[0]}")
    return objects


def identity(resource: Mapping[str, Any]) -> tuple[str, str, str]:
    return resource["apiVersion"], resource["kind"], resource["metadata"]["name"]


def referenced_files(directory: Path) -> set[Path]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files = {directory / "kustomization.yaml"}
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        files |= referenced_files(path) if path.is_dir() else {path}
    files |= {(directory / p["path"]).resolve() for p in kustomization.get("patches", [])}
    return files


@dataclass
class Rendering:
    """One kustomization's objects, and the bridge's parts of it."""

    name: str
    objects: list[dict[str, Any]]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: {len(found)} {kind} named {name}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment", "sse-bridge")

    @property
    def pod(self) -> dict[str, Any]:
        pod: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return pod

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod["containers"]
        (container,) = [c for c in containers if c["name"] == "bridge"]
        return container

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap", "sse-bridge")["data"]
        return data


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendering(request: pytest.FixtureRequest) -> Rendering:
    return Rendering(request.param, render(KUBERNETES / request.param))


def bridge_settings(config: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a container started with this ConfigMap as its environment gets."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    return load()


def seconds(quantity: str) -> float:
    """A Docker duration (``10s``, ``500ms``, ``1m``) in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", quantity)
    assert match, f"not a duration: {quantity}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, f"write memory in Mi or Gi: {quantity}"
    return int(match[1]) * (1024 if match[2] == "Gi" else 1)


# --- the manifests against the Kubernetes schemas ---------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes(rendering: Rendering, version: str) -> None:
    for resource in rendering.objects:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{rendering.name}: {identity(resource)} at {path}: {error.message}")


def test_no_manifest_escapes_validation() -> None:
    # A YAML file that no kustomization references would be neither applied nor checked.
    referenced = set().union(*(referenced_files(KUBERNETES / k) for k in KUSTOMIZATIONS))
    present = {p.resolve() for p in KUBERNETES.rglob("*.y*ml")}
    assert present - referenced == set()


def test_kubectl_renders_the_same_objects(rendering: Rendering) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the renderer here is not cross-checked")
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / rendering.name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    theirs = sorted(yaml.safe_load_all(done.stdout), key=identity)
    assert theirs == sorted(rendering.objects, key=identity)


# --- the numbers agree with the bridge --------------------------------------------------


def test_the_configmap_holds_only_settings_of_the_bridge(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert unknown_variables(rendering.config) == []
    settings = bridge_settings(rendering.config, monkeypatch)  # raises on a bad value
    assert settings.upstream_url is not None  # `serve` refuses to start without it


def test_the_grace_period_covers_prestop_and_the_bridges_shutdown(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = bridge_settings(rendering.config, monkeypatch)
    pre_stop = rendering.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = rendering.pod["terminationGracePeriodSeconds"]
    # The kubelet counts the grace period from the start of preStop; SIGTERM comes after it.
    assert grace >= pre_stop + settings.shutdown_grace + GRACE_MARGIN
    # The spread the operator chose fits in the grace, so the bridge does not cut it short.
    assert settings.drain_window == settings.drain_spread
    # Streams drain only after the proxies stopped sending new ones here.
    assert pre_stop >= 1


def test_the_readiness_probe_sees_the_drain_before_the_listener_closes(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = bridge_settings(rendering.config, monkeypatch)
    probe = rendering.container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= settings.drain_delay
    # /readyz may wait for one probe of the upstream (bridge/polling/upstream.py: at most the
    # upstream timeout, capped at 5 s): the kubelet must wait for that answer.
    assert probe["timeoutSeconds"] > min(settings.upstream_timeout, 5.0)


def test_probes_and_ports_are_the_bridges(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = bridge_settings(rendering.config, monkeypatch)
    container = rendering.container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["args"] == ["serve"]
    service = rendering.one("Service", "sse-bridge")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    labels = rendering.deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        service["spec"]["selector"],
        rendering.deployment["spec"]["selector"]["matchLabels"],
        rendering.one("PodDisruptionBudget", "sse-bridge")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    # The bridge reads every BRIDGE_* variable: no Service link may inject one.
    assert rendering.pod["enableServiceLinks"] is False
    # The image of this version of the bridge.
    assert container["image"].rsplit(":", 1)[1] == __version__


def test_a_rolling_update_surges_before_it_stops_a_pod(rendering: Rendering) -> None:
    strategy = rendering.deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    # With minAvailable equal to the replicas, a node drain would wait forever.
    budget = rendering.one("PodDisruptionBudget", "sse-bridge")["spec"]
    assert budget.get("maxUnavailable") == 1 and "minAvailable" not in budget


def test_the_pod_runs_as_the_images_user_on_a_read_only_root(rendering: Rendering) -> None:
    pod_security = rendering.pod["securityContext"]
    security = rendering.container["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    uid, gid = dockerfile_user()
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (uid, gid)


@dataclass(frozen=True)
class Measured:
    """The bench's figures for one bridge process, the least favourable of its runs."""

    idle_mib: float
    kib_per_stream: float
    new_streams_per_second: float


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def measured() -> Measured:
    """Read from the bench's reports, which deployment.yaml and docs/deploy.md cite."""
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    # | bridge | 10,000 | 295.1 | 23.0 | 1.91x | 1.22x | 2,804 (5,000 added) | ...
    row = re.search(
        r"^\| bridge \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|(?: (?:[\d.]+x|n/a) \|)+ ([\d,]+) \(",
        results,
        re.M,
    )
    assert row, "bench/RESULTS.md: the bridge's row of 'Memory and new streams' moved"
    streams, rss_mib, per_stream, rate = (_number(g) for g in row.groups())
    issue8 = (ROOT / "bench" / "results" / "issue8-before-after.md").read_text()
    # | RSS per open stream at 1,000 | 35.5 KiB (3.47x nchan) | 36.2 KiB (3.53x nchan) |
    after = re.search(r"^\| RSS per open stream at [\d,]+ \|[^|]+\| ([\d.]+) KiB", issue8, re.M)
    after_rate = re.search(r"^\| new streams/s, [^|]+\|[^|]+\| ([\d,]+)", issue8, re.M)
    assert after and after_rate, "bench/results/issue8-before-after.md: its rows moved"
    return Measured(
        idle_mib=rss_mib - streams * per_stream / 1024,
        kib_per_stream=max(per_stream, _number(after[1])),
        new_streams_per_second=min(rate, _number(after_rate[1])),
    )


def test_memory_fits_the_stream_cap_by_the_measured_cost(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = bridge_settings(rendering.config, monkeypatch)
    bench = measured()
    # The cap was set for this deployment, not left at the default of 20,000.
    assert "BRIDGE_MAX_STREAMS" in rendering.config
    needed = bench.idle_mib + settings.max_streams * bench.kib_per_stream / 1024
    resources = rendering.container["resources"]
    limit = mebibytes(resources["limits"]["memory"])
    assert limit >= needed, f"{settings.max_streams} streams need {needed:.0f} MiB"
    assert mebibytes(resources["requests"]["memory"]) == limit


def test_a_drained_pods_viewers_come_back_no_faster_than_one_process_accepts(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full pod's viewers reconnect over the drain window; even if all of them land on one
    # other pod (one replica: the surged one), its connect rate must keep up.
    settings = bridge_settings(rendering.config, monkeypatch)
    reconnects_per_second = settings.max_streams / settings.drain_window
    assert reconnects_per_second <= measured().new_streams_per_second


def test_the_redis_overlay_shares_one_redis_between_three_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    overlay = Rendering("redis", render(KUBERNETES / "redis"))
    assert overlay.deployment["spec"]["replicas"] == 3
    settings = bridge_settings(overlay.config, monkeypatch)
    assert settings.redis_url is not None
    url = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", settings.redis_url)
    assert url, settings.redis_url
    service = overlay.one("Service", url[1])
    assert [p["port"] for p in service["spec"]["ports"]] == [int(url[2])]
    redis = overlay.one("Deployment", url[1])
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= redis_labels.items()
    # Neither the bridge's Service nor its disruption budget takes Redis for a bridge.
    bridge_selector = overlay.one("Service", "sse-bridge")["spec"]["selector"]
    assert not bridge_selector.items() <= redis_labels.items()
    base = Rendering("base", render(KUBERNETES / "base"))
    assert base.deployment["spec"]["replicas"] == 1
    assert "BRIDGE_REDIS_URL" not in base.config


# --- the Dockerfile ---------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue  # Docker drops comment lines, also inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def instruction(name: str) -> list[str]:
    return [arguments for keyword, arguments in dockerfile_instructions() if keyword == name]


def dockerfile_user() -> tuple[int, int]:
    (user,) = instruction("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), "USER uid:gid, numeric, so runAsNonRoot can check"
    return int(uid), int(gid)


def exec_form(arguments: str) -> list[str]:
    assert arguments.startswith("["), f"use the exec (JSON) form: {arguments}"
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_the_image_installs_the_lock_with_hashes_then_the_package_alone() -> None:
    commands = [shlex.split(c) for run in instruction("RUN") for c in run.split("&&")]
    pip_installs = [
        # Where it installs (the build stage's --prefix) is not what is installed.
        [a for a in c[c.index("install") + 1 :] if not a.startswith("--prefix=")]
        for c in commands
        if c[:2] == ["pip", "install"]
    ]
    assert ["--require-hashes", "-r", "requirements.lock"] in pip_installs
    assert ["--no-deps", "."] in pip_installs
    # The locks are compiled for CPython 3.11 (scripts/lock --python-version 3.11): every
    # stage, the build stage whose python compiled the bytecode and the image's.
    bases = [re.sub(r"(?i)\s+AS\s+\w+$", "", f) for f in instruction("FROM")]
    assert bases
    for base in bases:
        assert re.fullmatch(r"python:3\.11(-slim)?(@sha256:[0-9a-f]{64})?", base), base
    assert len(set(bases)) == 1, "the build stage's python must be the image's"


def test_the_image_runs_serve_as_a_non_root_user_on_the_default_port() -> None:
    uid, gid = dockerfile_user()
    assert uid != 0 and gid != 0
    assert instruction("EXPOSE") == [str(Settings.model_fields["port"].default)]
    assert instruction("STOPSIGNAL") == ["SIGTERM"]  # the signal the bridge drains on
    assert [exec_form(a) for a in instruction("ENTRYPOINT")] == [["sse-bridge"]]
    assert [exec_form(a) for a in instruction("CMD")] == [["serve"]]


def test_the_demo_command_the_dockerfile_documents_exists() -> None:
    # The demo listens on 127.0.0.1 by default: in a container it needs --host 0.0.0.0.
    assert "sse-bridge demo --host 0.0.0.0" in DOCKERFILE.read_text()
    args = build_parser().parse_args(["demo", "--host", "0.0.0.0"])
    assert args.host == "0.0.0.0"
    assert "demo --host 0.0.0.0" in (ROOT / "docs" / "deploy.md").read_text()


# --- .dockerignore, matched as Docker matches it ----------------------------------------


@dataclass(frozen=True)
class IgnorePattern:
    """One .dockerignore line, compiled as moby/patternmatcher compiles it
    (patternmatcher.go: New, Pattern.compile, Pattern.match; the BuildKit build context
    uses MatchesOrParentMatches)."""

    text: str
    exclusion: bool
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, line: str) -> IgnorePattern | None:
        line = line.strip()
        if not line or line.startswith("#"):
            return None
        exclusion = line.startswith("!")
        text = os.path.normpath(line[1:].strip() if exclusion else line).lstrip("/")
        regex, i = "", 0
        while i < len(text):
            char = text[i]
            if text.startswith("**", i):
                i += 2
                if text.startswith("/", i):
                    i += 1  # "**/" is "**"
                regex += ".*" if i == len(text) else "(.*/)?"
                continue
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif char == "\\" and i + 1 < len(text):
                i += 1
                regex += re.escape(text[i])
            elif char in "[]":
                regex += char  # a character class, as in Go's filepath.Match
            else:
                regex += re.escape(char)
            i += 1
        return cls(text, exclusion, re.compile(regex))

    def matches(self, path: str) -> bool:
        if self.regex.fullmatch(path):
            return True
        parts = path.split("/")[:-1]  # or one of its parent directories
        return any(self.regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts)))

    def literal_prefix(self) -> str:
        return re.split(r"[*?\[\\]", self.text, maxsplit=1)[0]


def ignore_patterns() -> list[IgnorePattern]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [p for p in map(IgnorePattern.parse, lines) if p is not None]


def excluded(path: str, patterns: list[IgnorePattern]) -> bool:
    matched = False
    for pattern in patterns:
        # Later lines win; a "!" line only matters for a path excluded so far.
        if pattern.exclusion == matched and pattern.matches(path):
            matched = not pattern.exclusion
    return matched


def build_context(patterns: list[IgnorePattern]) -> Iterator[str]:
    """The files `docker build .` sends, slash-separated and relative to the repository."""
    reincluding = [p.literal_prefix() for p in patterns if p.exclusion]
    for directory, dirs, files in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        for name in files:
            if not excluded(prefix + name, patterns):
                yield prefix + name
        # Skip an excluded directory unless a "!" line may bring back something in it
        # (BuildKit walks such directories too; walking .venv here would take long).
        dirs[:] = [
            d
            for d in dirs
            if not excluded(prefix + d, patterns)
            or any(
                r.startswith(prefix + d + "/") or (prefix + d).startswith(r) or r in ("", ".")
                for r in reincluding
            )
        ]


def copy_sources() -> list[str]:
    sources = []
    for arguments in instruction("COPY"):
        if "--from=" in arguments:
            continue  # from an earlier stage, not the build context
        words = [w for w in shlex.split(arguments) if not w.startswith("--")]
        sources += [os.path.normpath(s) for s in words[:-1]]
    return sources


def test_every_copy_source_is_in_the_build_context_and_nothing_else_is() -> None:
    patterns = ignore_patterns()
    context = set(build_context(patterns))
    sources = copy_sources()
    assert sources, "the Dockerfile copies nothing?"
    needed: set[str] = set()
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the repository"
        assert not excluded(source, patterns), f"COPY {source}: .dockerignore leaves it out"
        if path.is_dir():
            files = {p.relative_to(ROOT).as_posix() for p in path.rglob("*") if p.is_file()}
            kept = {f for f in files if not re.search(r"(^|/)__pycache__/|\.py[co]$", f)}
            assert kept <= context, f"COPY {source}: left out: {sorted(kept - context)}"
            needed |= files
        else:
            needed.add(source)
    # The package's sources and data reach the image (pyproject's package-data).
    assert {"bridge/__init__.py", "bridge/py.typed"} <= context
    assert any(f.startswith("bridge/web/static/") for f in context)
    # Docker sends the Dockerfile and .dockerignore whatever the patterns say.
    assert context - needed <= {"Dockerfile", ".dockerignore"}, sorted(context - needed)


def test_the_heavy_and_private_parts_of_the_checkout_stay_out() -> None:
    patterns = ignore_patterns()
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "bench/out/lifecycle.json",
        "docs/dashboard.png",
        ".mypy_cache/3.11/x.json",
        "build/lib/bridge/web/app.py",
        "sse_bridge.egg-info/PKG-INFO",
        "bridge/__pycache__/app.cpython-311.pyc",
        ".env",
        "deploy/kubernetes/base/deployment.yaml",
    ]:
        assert excluded(path, patterns), path


def test_the_pattern_matcher_follows_dockers_rules() -> None:
    # Cases from Docker's documented behaviour, so the context test above means something.
    def ignores(lines: list[str], path: str) -> bool:
        return excluded(path, [p for p in map(IgnorePattern.parse, lines) if p is not None])

    assert ignores(["*"], "bridge/web/app.py")  # through its parent directory
    assert not ignores(["*", "!bridge"], "bridge/web/app.py")
    assert ignores(["*", "!bridge", "**/__pycache__"], "bridge/sub/__pycache__/x.pyc")
    assert ignores(["**/*.pyc"], "x.pyc") and ignores(["**/*.pyc"], "a/b/x.pyc")
    assert not ignores(["*/temp*"], "temp.txt") and ignores(["*/temp*"], "a/temporary.txt")
    assert ignores(["/docs"], "docs/a.md")
    assert ignores(["temp?"], "temp1") and not ignores(["temp?"], "temp12")
    assert not ignores(["*.md", "!README*.md"], "README-x.md")


# --- the HEALTHCHECK, run by hand -------------------------------------------------------


@dataclass(frozen=True)
class Healthcheck:
    argv: list[str]
    timeout: float


def healthcheck() -> Healthcheck:
    (arguments,) = instruction("HEALTHCHECK")
    options, _, command = arguments.partition("CMD ")
    flags = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
    argv = exec_form(command.strip())
    # The image's python, here the test's own interpreter (the same Python 3.11).
    assert argv[0] == "python"
    return Healthcheck([sys.executable, *argv[1:]], seconds(flags.get("timeout", "30s")))


def without_bridge_variables(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    return {**env, **extra}


async def run_healthcheck(check: Healthcheck, env: Mapping[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(
        *check.argv,
        env=dict(env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        # Docker kills a check that outlives --timeout and counts it as a failure.
        async with asyncio.timeout(check.timeout):
            return await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def free_port() -> int:
    probe = loopback_socket()
    port: int = probe.getsockname()[1]
    probe.close()
    return port


NOWHERE = "http://127.0.0.1:9"  # /healthz and the drain do not need the upstream


async def test_the_healthcheck_follows_bridge_port_and_host() -> None:
    check = healthcheck()
    async with serve_process(NOWHERE, {}) as (_, url):
        port = url.rsplit(":", 1)[1]
        assert port != "8080"
        # As in a container: the same variables as the bridge, BRIDGE_HOST unset (0.0.0.0,
        # reached on 127.0.0.1), or set to the listener's own address.
        assert await run_healthcheck(check, without_bridge_variables({"BRIDGE_PORT": port})) == 0
        both = {"BRIDGE_PORT": port, "BRIDGE_HOST": "127.0.0.1"}
        assert await run_healthcheck(check, without_bridge_variables(both)) == 0
        # The Deployment's probe paths are served: liveness 200, readiness an answer
        # (503 here: the upstream is unreachable), not a 404.
        container = Rendering("base", render(KUBERNETES / "base")).container
        async with aiohttp.ClientSession() as http:
            async with http.get(url + container["livenessProbe"]["httpGet"]["path"]) as r:
                assert r.status == 200
            async with http.get(url + container["readinessProbe"]["httpGet"]["path"]) as r:
                assert r.status == 503
                assert (await r.json())["upstream"] == "unreachable"


async def test_the_healthcheck_fails_when_nothing_listens() -> None:
    env = without_bridge_variables({"BRIDGE_PORT": str(free_port())})
    # 1, not another code: Docker reserves 2, and any exit but 0 and 1 is not a verdict.
    assert await run_healthcheck(healthcheck(), env) == 1


async def test_the_healthcheck_speaks_https_when_the_bridge_does(tmp_path: Path) -> None:
    certificate = make_certificate(tmp_path)
    tls = {
        "BRIDGE_TLS_CERTFILE": str(certificate.certfile),
        "BRIDGE_TLS_KEYFILE": str(certificate.keyfile),
    }
    # serve_process's readiness wait speaks plain HTTP: the TLS bridge is started here.
    port = str(free_port())
    env = without_bridge_variables(
        {**tls, "BRIDGE_UPSTREAM_URL": NOWHERE, "BRIDGE_HOST": "127.0.0.1", "BRIDGE_PORT": port}
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(15), aiohttp.ClientSession() as http:
            while True:
                assert process.returncode is None, "the TLS bridge exited at start"
                try:
                    # ssl=False: any certificate; this only waits for the bridge to answer.
                    async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=False) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        assert await run_healthcheck(healthcheck(), env) == 0
        # Without the TLS variables the check speaks HTTP to an HTTPS listener: it fails.
        plain = without_bridge_variables({"BRIDGE_PORT": port, "BRIDGE_HOST": "127.0.0.1"})
        assert await run_healthcheck(healthcheck(), plain) == 1
    finally:
        process.kill()
        await process.wait()
