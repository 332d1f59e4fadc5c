"""The container image: the Dockerfile built as it is, and the image run, with podman.

No Docker engine here, and no image registry: scripts/image-base makes the Dockerfile's base,
``python:3.11-slim``, from Debian's packages (a stand-in, cached outside the checkout), and
scripts/podman runs podman with the settings this machine needs. The Dockerfile is built
unchanged (``--pull=never --format docker``, the format that keeps HEALTHCHECK), and each
container runs as the Kubernetes manifests run the bridge: a read-only root filesystem with
a tmpfs for each emptyDir they mount, no capabilities, no privilege escalation.

What is checked on the image: its configuration is the Dockerfile's, and it holds one copy
of the package, the installed one (the build stage keeps the sources and pip's build tree).
On the running image:

- ``serve`` in front of a loopback upstream (the simulated legacy API in this process;
  host network): a run streamed through it, start to ``complete``; ``/readyz`` 200.
- ``demo --host 0.0.0.0`` on podman's own network, reached through a port published on
  127.0.0.1 (the Dockerfile's demo command).
- The image's HEALTHCHECK, run by podman: healthy; unhealthy when BRIDGE_PORT is not where
  the bridge listens.
- The process's uid and gid are the manifests' runAsUser and runAsGroup (not root), the
  root filesystem refuses writes, and every module comes from the bytecode pip compiled at
  build time (a read-only container cannot write it, so it would compile at every start).
- ``podman stop``, with the ConfigMap's drain settings: every open stream ends with a
  ``retry:`` and no terminal event, and the process exits by itself (code 0, not podman's
  SIGKILL) within the time the manifests leave between SIGTERM and SIGKILL.

When podman cannot run a container these tests fail, saying so; they are never skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bridge.demo.legacy_api import LegacyApi
from tests.support import SseStream, loopback_socket, sse
from tests.test_deploy import KUBERNETES, Rendering, dockerfile_user, render

#: The first build of a machine fetches the base's packages and the lock's wheels.
pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
PODMAN = str(ROOT / "scripts" / "podman")
BASE = "docker.io/library/python:3.11-slim"
#: Bound of a container's start (podman's, then the bridge's).
START_TIMEOUT = 30.0
#: Bound of one podman command that is not a build or a stop.
COMMAND_TIMEOUT = 60.0
NOWHERE = "http://127.0.0.1:9"  # /healthz, the user and the filesystem need no upstream


def manifests() -> Rendering:
    return Rendering("base", render(KUBERNETES / "base"))


# --- podman -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


def podman_sync(
    *args: str, timeout: float = COMMAND_TIMEOUT, env: Mapping[str, str] | None = None
) -> Done:
    done = subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    return Done(done.returncode, done.stdout, done.stderr)


async def podman(*args: str, timeout: float = COMMAND_TIMEOUT) -> Done:
    """podman, without blocking the event loop that serves the upstream."""
    process = await asyncio.create_subprocess_exec(
        PODMAN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


def podman_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why podman cannot run a container here, in one plain sentence; None when it can."""
    try:
        done = podman_sync("run", "--rm", "--network", "none", BASE, "true", env=env)
    except (OSError, subprocess.TimeoutExpired) as error:
        reason = str(error)
    else:
        if done.code == 0:
            return None
        lines = [line for line in (done.err + done.out).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit {done.code}"
    return (
        f"podman cannot run a container here, so the image is not tested: {reason}. "
        "scripts/install installs podman, runc and debootstrap; docs/deploy.md "
        "('How the image is tested') has the settings this machine needs."
    )


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The Dockerfile, built as it is on the (stand-in) base: the image's tag."""
    base = subprocess.run(
        [str(ROOT / "scripts" / "image-base")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if base.returncode != 0:
        pytest.fail(
            f"scripts/image-base could not provide {BASE}, so the image is not tested:\n"
            f"{base.stdout}{base.stderr}",
            pytrace=False,
        )
    problem = podman_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    tag = f"localhost/sse-bridge-test:{uuid.uuid4().hex[:12]}"
    build = podman_sync(
        "build", "--pull=never", "--format", "docker", "--network", "host",
        "-t", tag, str(ROOT),
        timeout=900,
    )  # fmt: skip
    if build.code != 0:
        pytest.fail(f"podman build failed:\n{build.out[-4000:]}{build.err[-4000:]}", pytrace=False)
    try:
        yield tag
    finally:
        podman_sync("rmi", "-f", tag)


def run_options() -> list[str]:
    """What the Deployment's securityContext and volumes ask of a container runtime."""
    rendering = manifests()
    security = rendering.container["securityContext"]
    options = []
    if security["readOnlyRootFilesystem"]:
        # podman's --read-only adds tmpfs of its own (/tmp, /var/tmp, /run): not in a pod.
        options += ["--read-only", "--read-only-tmpfs=false"]
    volumes = {v["name"]: v for v in rendering.pod.get("volumes", [])}
    for mount in rendering.container.get("volumeMounts", []):
        empty_dir = volumes[mount["name"]]["emptyDir"]
        size = re.fullmatch(r"(\d+)Mi", empty_dir["sizeLimit"])
        assert size, empty_dir
        options += ["--tmpfs", f"{mount['mountPath']}:rw,size={size[1]}m"]
    if security["capabilities"] == {"drop": ["ALL"]}:
        options += ["--cap-drop", "ALL"]
    if security["allowPrivilegeEscalation"] is False:
        options += ["--security-opt", "no-new-privileges"]
    return options


@dataclass
class Container:
    name: str
    url: str

    async def logs(self) -> str:
        done = await podman("logs", self.name)
        return done.out + done.err

    async def exec(self, *command: str) -> Done:
        return await podman("exec", self.name, *command)


def free_port() -> int:
    probe = loopback_socket()
    port: int = probe.getsockname()[1]
    probe.close()
    return port


@asynccontextmanager
async def container(
    image: str,
    args: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    network: Sequence[str] = ("--network", "host"),
    wait: bool = True,
) -> AsyncIterator[Container]:
    """The image running ``args`` until the block ends (then removed); its URL on the
    host's loopback, answering /healthz unless ``wait`` is false."""
    name = f"sse-bridge-test-{uuid.uuid4().hex[:12]}"
    env_options = [f"--env={k}={v}" for k, v in (env or {}).items()]
    started = await podman(
        "run", "-d", "--name", name, *network, *run_options(), *env_options, image, *args
    )
    try:
        assert started.code == 0, f"podman run failed: {started.err}"
        box = Container(name, f"http://127.0.0.1:{port}")
        if wait:
            await until_it_answers(box)
        yield box
    finally:
        await podman("rm", "-f", "-t", "0", name)


async def until_it_answers(box: Container) -> None:
    try:
        async with asyncio.timeout(START_TIMEOUT), aiohttp.ClientSession() as http:
            while True:
                state = await podman(
                    "container", "inspect", "--format", "{{.State.Status}}", box.name
                )
                assert state.out.strip() == "running", f"the container stopped at start: {state}"
                try:
                    async with http.get(box.url + "/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
    except (AssertionError, TimeoutError) as error:
        raise AssertionError(f"{error!r}; its log:\n{await box.logs()}") from error


def serve_env(upstream: str, port: int, **more: str) -> dict[str, str]:
    return {
        "BRIDGE_UPSTREAM_URL": upstream,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_POLL_INTERVAL": "0.05",
        **more,
    }


# --- the image --------------------------------------------------------------------------


def test_the_image_is_the_dockerfiles(image: str) -> None:
    done = podman_sync("image", "inspect", image)
    assert done.code == 0, done.err
    (inspected,) = json.loads(done.out)
    config = inspected["Config"]
    uid, gid = dockerfile_user()
    assert config["User"] == f"{uid}:{gid}"
    assert config["Entrypoint"] == ["sse-bridge"] and config["Cmd"] == ["serve"]
    assert config["StopSignal"] == "SIGTERM"
    assert list(config["ExposedPorts"]) == ["8080/tcp"]
    # Kept by the docker format (the OCI format drops HEALTHCHECK, and podman warns).
    assert inspected["Healthcheck"]["Test"][:2] == ["CMD", "python"]


def test_the_image_holds_the_installed_package_only(image: str) -> None:
    # The build stage's sources and pip's in-tree build/ stay there: one copy of the
    # package in the image, the installed one.
    found = podman_sync(
        # As root: the image's user may not read /root and the like.
        "run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "find", image,
        "/", "-xdev", "-path", "*/bridge/web/app.py",
    )  # fmt: skip
    assert found.code == 0, found.err
    assert found.out.split() == ["/usr/local/lib/python3.11/site-packages/bridge/web/app.py"]


async def test_serve_streams_a_run_from_a_loopback_upstream(image: str, legacy: LegacyApi) -> None:
    run = legacy.scripted("img", nodes=("a", "b"), outcome="completed")
    port = free_port()
    async with container(image, ["serve"], port=port, env=serve_env(legacy.url, port)) as box:
        async with aiohttp.ClientSession() as http:
            async with http.get(box.url + "/readyz") as r:
                assert r.status == 200, await r.text()
        async with sse(f"{box.url}/v1/runs/img/stream") as s:
            assert s.status == 200
            first = await s.next_named("progress")
            assert json.loads(first.data) == run.statuses[0]
            for expected in run.statuses[1:]:
                run.advance()
                event = await s.next_named("progress", "complete")
                assert json.loads(event.data) == expected
            assert event.event == "complete"
            assert await s.rest() == []
        assert legacy.requests["img"] >= len(run.statuses)
        # The image's own HEALTHCHECK, run by podman in the container.
        check = await podman("healthcheck", "run", box.name)
        assert (check.code, check.out.strip()) == (0, ""), check


async def test_the_demo_is_reached_through_a_published_port(image: str) -> None:
    port = free_port()
    published = ["--network", "bridge", "--publish", f"127.0.0.1:{port}:8080"]
    async with container(image, ["demo", "--host", "0.0.0.0"], port=port, network=published) as box:
        async with aiohttp.ClientSession() as http:
            async with http.get(box.url + "/") as r:
                assert r.status == 200
                assert r.content_type == "text/html"
        # The demo starts a run of its own at once.
        async with sse(f"{box.url}/v1/runs/run-0001/stream") as s:
            assert (await s.next_named("progress", timeout=10)).event == "progress"


async def test_the_healthcheck_is_unhealthy_when_bridge_port_is_wrong(image: str) -> None:
    port, elsewhere = free_port(), free_port()
    args = ["demo", "--host", "127.0.0.1", "--port", str(port)]
    # The bridge answers on `port`; the check asks BRIDGE_PORT, where nothing listens.
    async with container(image, args, port=port, env={"BRIDGE_PORT": str(elsewhere)}) as box:
        check = await podman("healthcheck", "run", box.name)
        assert (check.code, check.out.strip()) == (1, "unhealthy"), check


async def test_it_runs_as_the_manifests_user_on_a_read_only_root(image: str) -> None:
    port = free_port()
    rendering = manifests()
    pod = rendering.pod["securityContext"]
    async with container(image, ["serve"], port=port, env=serve_env(NOWHERE, port)) as box:
        ids = await box.exec("sh", "-c", "echo $(id -u) $(id -g)")
        assert ids.out.split() == [str(pod["runAsUser"]), str(pod["runAsGroup"])]
        assert pod["runAsUser"] != 0
        # PID 1 is the bridge itself (exec-form ENTRYPOINT), so podman's SIGTERM reaches it.
        comm = await box.exec("cat", "/proc/1/cmdline")
        assert "sse-bridge" in comm.out
        written = await box.exec("sh", "-c", "echo x > /usr/local/x")
        assert written.code != 0 and "Read-only file system" in written.err
        # The Deployment's emptyDir at /tmp is writable.
        assert (await box.exec("sh", "-c", "echo x > /tmp/x")).code == 0
        # Every module of the bridge's start-up comes from a valid .pyc: from source, a line
        # "code object from /path/x.py" (unquoted) instead of "code object from '...pyc'".
        verbose = await box.exec("python", "-v", "-c", "import bridge.cli, bridge.web.app")
        assert verbose.code == 0, verbose.err
        from_source = re.findall(r"^# code object from (/\S+\.py)$", verbose.err, re.M)
        assert "bridge/web/__pycache__/app.cpython-311.pyc" in verbose.err
        assert from_source == []


async def test_podman_stop_drains_the_streams_within_the_manifests_grace(
    image: str, legacy: LegacyApi
) -> None:
    rendering = manifests()
    pre_stop = rendering.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The kubelet's SIGKILL comes terminationGracePeriodSeconds after preStop starts.
    grace = rendering.pod["terminationGracePeriodSeconds"] - pre_stop
    legacy.scripted("drain")
    port = free_port()
    env = {**rendering.config, **serve_env(legacy.url, port)}
    viewers = 5
    async with container(image, ["serve"], port=port, env=env) as box:
        async with aiohttp.ClientSession() as http, AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(
                    sse(f"{box.url}/v1/runs/drain/stream", session=http)
                )
                for _ in range(viewers)
            ]
            for s in streams:
                await s.next_named("progress")

            async def until_closed(s: SseStream) -> bytes:
                assert await s.rest(timeout=grace) == []  # no terminal event
                return bytes(s.raw).rstrip(b"\n").rsplit(b"\n", 1)[-1]

            stop = asyncio.create_task(
                podman("stop", "-t", str(grace), box.name, timeout=grace + 30)
            )
            try:
                tails = await asyncio.gather(*(until_closed(s) for s in streams))
            finally:
                stopped = await stop
        assert stopped.code == 0, stopped
        assert all(tail.startswith(b"retry: ") for tail in tails), tails
        state = await podman("container", "inspect", "--format", "{{.State.ExitCode}}", box.name)
        logs = await box.logs()
        # 0: the bridge exited by itself; podman's SIGKILL after `grace` would give 137.
        assert state.out.strip() == "0", logs
        assert "draining" in logs and "Traceback" not in logs


def test_a_podman_that_cannot_run_is_named_plainly(tmp_path: Path) -> None:
    fake = tmp_path / "podman"
    fake.write_text("#!/bin/sh\necho 'Error: runc: container_linux.go: no cgroup' >&2\nexit 126\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    problem = podman_problem(env)
    assert problem is not None
    assert problem.startswith("podman cannot run a container here, so the image is not tested")
    assert "no cgroup" in problem and "scripts/install" in problem
    # No podman at all: scripts/podman says so (bash by its path: PATH holds nothing).
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        ["/bin/bash", PODMAN, "info"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
        env={"PATH": str(empty)},
    )
    assert done.returncode == 127
    assert "scripts/podman: podman is not installed (scripts/install installs it)" in done.stderr
