"""One Prefect server per node, and pipeline instances that cannot start each other's runs (issue 22).

As operated, in child processes: ``contimg serve`` for instance A starts the node's
server (on a free port, its database under a temporary ``PREFECT_HOME``) and serves
A's deployments; a hand run beside it, ``contimg run target``, uses that server;
``contimg serve`` for instance B (another base directory) finds the server running
and adds B's deployments; a group dropped into each instance's incoming directory
is converted and routed by the events and triggers alone. With no server, a command
runs on an ephemeral server of its own and leaves the node's database alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTIMG = Path(sys.executable).parent / "contimg"
#: Target groups (no calibrator transits them at the default pointing): one for the hand run, one per instance.
HAND_GROUP, GROUP_A, GROUP_B = "2026-12-01T10:00:00", "2026-12-01T10:10:00", "2026-12-01T10:20:00"


def _env(base: Path, node: Path, api_url: str) -> dict[str, str]:
    """A process of the instance under ``base`` on the node whose Prefect state is under ``node``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTIMG_", "PREFECT_API_"))}
    env.update(CONTIMG_BASE_DIR=str(base), CONTIMG_PREFECT_API_URL=api_url, PREFECT_HOME=str(node / "home"),
               CONTIMG_FILE_SETTLE_S="0", CONTIMG_FLAG_TARGETS="false", CONTIMG_IMAGING_FIND_SOURCES="false")
    return env


def _contimg(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONTIMG), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _simulate(out: Path, start: str, env: dict[str, str]) -> None:
    """One small group into ``out``, each file moved in whole (a watcher with no settle time may look)."""
    stage = out.parent / f".stage-{start}"
    done = _contimg("simulate", "--out", str(stage), "--start", start, "--scale", "small", env=env)
    assert done.returncode == 0, done.stderr
    out.mkdir(parents=True, exist_ok=True)
    for path in stage.iterdir():
        path.rename(out / path.name)


class _Serve:
    """``contimg serve`` of one instance, in its own process group, its output in ``log``."""

    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([str(CONTIMG), "serve", "--startup-timeout", "180"], env=env, cwd=REPO,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_serving(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while "Prefect UI:" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"contimg serve did not start: {self.log.read_text()[-3000:]}"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # to contimg serve only: it stops its server itself, after the runner has paused its deployments
            # (a server stopped first leaves the runner retrying it)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """The node: ``contimg serve`` of instance A, which started the node's Prefect server."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from pipeline import _free_port

    root = tmp_path_factory.mktemp("node")
    api_url = f"http://127.0.0.1:{_free_port()}/api"
    env_a = _env(root / "a", root, api_url)
    serve_a = _Serve(env_a, root / "serve-a.log")
    try:
        serve_a.wait_serving()
        yield {"root": root, "api_url": api_url, "env_a": env_a, "serve_a": serve_a}
    finally:
        serve_a.stop()
        sys.path.remove(str(REPO / "benchmarks"))


def _flow_runs(api_url: str) -> list[dict]:
    from pipeline import _post

    return _post(api_url, "/flow_runs/filter", {"limit": 200})


def _deployments(api_url: str) -> dict[str, str]:
    """Deployment id -> name."""
    from pipeline import _post

    return {d["id"]: d["name"] for d in _post(api_url, "/deployments/filter", {"limit": 200})}


def _stages(base: Path) -> dict[str, str]:
    from catalog import query

    try:
        return {r["group_id"]: r["stage"] for r in query.latest(base / "catalog", "ms_index")}
    except Exception:  # noqa: BLE001 - no table before the first conversion
        return {}


def _no_database_lock(*logs: Path) -> None:
    for log in logs:
        assert "database is locked" not in log.read_text(), f"{log}: {log.read_text()[-3000:]}"


@pytest.mark.slow
def test_a_hand_run_beside_contimg_serve_runs_on_its_server(node):
    env = node["env_a"]
    _simulate(node["root"] / "hand", HAND_GROUP, env)
    converted = _contimg("convert", str(node["root"] / "hand"), env=env)
    assert converted.returncode == 0, converted.stderr

    run = _contimg("run", "target", HAND_GROUP, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"using the Prefect server at {node['api_url']}", run.stdout
    assert lines[-1].startswith(f"{HAND_GROUP}  waiting_for_cal"), run.stdout  # or held: serve's sweep routes it
    # the hand run is in the served UI: a run of no deployment, not a subflow, named after the group
    hand = [r for r in _flow_runs(node["api_url"]) if r["name"] == f"target-{HAND_GROUP}"
            and r["deployment_id"] is None and r["parent_task_run_id"] is None]
    assert [r["state_type"] for r in hand] == ["COMPLETED"], hand
    _no_database_lock(node["serve_a"].log)
    assert "database is locked" not in run.stderr
    assert "Starting temporary server" not in run.stderr  # no second server


@pytest.mark.slow
def test_two_instances_on_one_node_run_only_their_own_groups(node):
    from contimg.config import load_settings, pipeline_instance

    root, api_url = node["root"], node["api_url"]
    env_b = _env(root / "b", root, api_url)
    instance = {name: pipeline_instance(load_settings(environ={}, base_dir=root / name)) for name in "ab"}
    serve_b = _Serve(env_b, root / "serve-b.log")
    try:
        serve_b.wait_serving()
        assert "starting Prefect server" not in serve_b.log.read_text()  # B uses the node's server
        # one group arrives in each instance: the watchers' events and the triggers do the rest
        _simulate(root / "a" / "incoming", GROUP_A, node["env_a"])
        _simulate(root / "b" / "incoming", GROUP_B, env_b)
        deadline = time.monotonic() + 300
        while True:
            stages = {name: _stages(root / name) for name in "ab"}
            runs = _flow_runs(api_url)
            busy = [r["name"] for r in runs if r["state_type"] in ("PENDING", "RUNNING")]
            if stages["a"].get(GROUP_A) == "waiting_for_cal" and stages["b"].get(GROUP_B) == "waiting_for_cal" \
                    and not busy:
                break
            assert time.monotonic() < deadline, (stages, busy)
            time.sleep(2)
    finally:
        serve_b.stop()

    assert GROUP_B not in stages["a"] and GROUP_A not in stages["b"] and HAND_GROUP not in stages["b"]
    names = _deployments(api_url)
    ran = [r for r in runs if r["deployment_id"] and r["state_type"] not in ("SCHEDULED",)]
    assert not [(r["name"], r["state_name"]) for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
    by_instance: dict[str, set[str]] = {"a": set(), "b": set()}
    for r in ran:
        name = names[r["deployment_id"]]
        owner = next(k for k, v in instance.items() if name.endswith(f"-{v}"))
        assert r["parameters"].get("instance") == instance[owner], (name, r["parameters"])
        group = r["parameters"].get("group_id") or r["parameters"].get("ms_or_group_id")
        if group:
            by_instance[owner].add(group)
    # each instance's deployments ran its own groups, converted and routed by the events
    assert by_instance["b"] == {GROUP_B}, by_instance
    assert GROUP_A in by_instance["a"] and GROUP_B not in by_instance["a"], by_instance
    triggered = {names[r["deployment_id"]] for r in ran}
    for name in "ab":
        assert {f"ingest-group-{instance[name]}", f"target-group-{instance[name]}"} <= triggered, triggered
    _no_database_lock(node["serve_a"].log, serve_b.log)
    print(json.dumps({k: sorted(v) for k, v in by_instance.items()}))


def test_with_no_server_a_run_has_an_ephemeral_server_of_its_own(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from pipeline import _free_port
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    nowhere = f"http://127.0.0.1:{_free_port()}/api"
    env = {**_env(tmp_path / "data", tmp_path, nowhere), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    run = _contimg("run", "wake", env=env)
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    assert first.startswith(f"no Prefect server at {nowhere}: an ephemeral server of this run's own"), first
    assert "no group is waiting for calibration" in run.stdout
    # the node's database (PREFECT_HOME) is not touched, and the run's own is removed
    assert not list((tmp_path / "home").glob("prefect.db*"))
    assert not list((tmp_path / "tmp").glob("contimg-prefect-*"))
