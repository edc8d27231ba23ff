"""The Ray executor on a real local Ray cluster (2 CPUs, every address on 127.0.0.1: ``start_local``).

* the smoke profile through Ray gives the sequential executor's records (bit for bit at one thread per run);
* a run whose worker process is killed mid-run is retried and the profile completes, with the same records;
* retries are bounded: a task that always dies becomes a failed record, the others finish;
* small adapters travel with the tasks: each task on an empty "node" folder, the driver still ends with every adapter;
* ``peftatlas run --profile smoke --executor ray`` killed mid-way and started again redoes nothing finished;
* (slow) ``--address`` joins a ``ray start --head`` kept on loopback, and says what to set when the token is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import ray  # the ray extra, installed by `bash install.sh --test`: these tests must not skip

from peftatlas.evidence.arena import run_profile
from peftatlas.evidence.execute import RUNNING
from peftatlas.evidence.executors import drive
from peftatlas.evidence.plan import build_plan
from peftatlas.evidence.profiles import PROFILES
from peftatlas.evidence.ray_executor import SHIP_LIMIT, RayExecutor, _execute_json, _mentions_auth, pack, start_local
from peftatlas.evidence.store import ResultsStore, RunRecord
from record_checks import kill_first_run, unchanged

# one xdist worker for the module under `--dist loadgroup` (it shares one cluster and one sequential baseline)
pytestmark = pytest.mark.xdist_group("ray")

SMOKE = PROFILES["smoke"]
TOTAL = len(SMOKE.methods) * (len(SMOKE.lr_factors) * SMOKE.sweep_seeds + len(SMOKE.seeds)) + 1
ENV = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(
    [str(Path(__file__).resolve().parents[1] / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))


@dataclasses.dataclass(frozen=True)
class Baseline:
    records: list[RunRecord]
    root: Path


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU local Ray cluster in this process (the executors below use it and leave it running)."""
    assert not ray.is_initialized()
    start_local(ray, num_cpus=2, num_gpus=0)
    node = ray._private.worker._global_node
    assert node.node_ip_address == "127.0.0.1" and node.gcs_address.startswith("127.0.0.1:")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Baseline:
    """The smoke profile's records (and their folder) from the sequential executor at one torch thread per run."""
    root = tmp_path_factory.mktemp("seq")
    records = run_profile(SMOKE, root / "s.sqlite", progress=False, threads=1)
    assert len(records) == TOTAL and all(r.status == "done" for r in records)
    return Baseline(records, root)


def comparable(records) -> list[dict]:
    """Records without their times, by key (the rest — metrics, items, curves, arms — must be identical)."""
    out = []
    for r in sorted(records, key=lambda r: r.key):
        d = dataclasses.asdict(r)
        d.pop("created"), d.pop("wall_seconds")
        out.append(d)
    return out


def test_ray_gives_the_sequential_records(cluster, sequential, tmp_path):
    via_ray = run_profile(SMOKE, tmp_path / "s.sqlite", progress=False, executor="ray")
    assert comparable(via_ray) == comparable(sequential.records)


def test_a_killed_task_is_retried_and_the_profile_completes(cluster, sequential, tmp_path):
    killed: list[tuple[str, int]] = []
    retried: list[str] = []
    killer = threading.Thread(target=kill_first_run, daemon=True,
                              args=(tmp_path / "artifacts" / RUNNING, killed, retried, time.time() + 300))
    killer.start()
    records = run_profile(SMOKE, tmp_path / "s.sqlite", progress=False, executor="ray")
    killer.join(5)
    assert killed, "no run was seen in progress"
    assert killed[0][1] != os.getpid()
    assert retried, "the killed run was not retried"
    assert all(r.status == "done" for r in records), [r.error for r in records if r.status != "done"]
    assert comparable(records) == comparable(sequential.records)


def test_retries_are_bounded(cluster, tmp_path):
    def dies(spec_json: str, root: str, *args: Any) -> dict[str, Any]:
        """``_execute_json`` whose worker dies on every attempt at a full fine-tuning run and on the first
        attempt at any other (attempts counted in ``<root>/attempts``)."""
        spec = json.loads(spec_json)
        tried = Path(root) / "attempts" / spec["key"]
        tried.parent.mkdir(exist_ok=True)
        with tried.open("a") as f:
            f.write("x")
        if spec["method"] == "full" or tried.stat().st_size == 1:
            os._exit(1)
        return _execute_json(spec_json, root, *args)

    plan = build_plan(SMOKE, ["full", "head_only"], log=None, cache=tmp_path / "plans")
    ready = plan.ready({})
    specs = [next(s for s in ready if s.method == m) for m in ("full", "head_only")]
    ex = RayExecutor(tmp_path, max_retries=1)
    ex.remote = cluster.remote(dies).options(num_cpus=1, num_gpus=0, max_retries=1, retry_exceptions=False)
    try:
        for spec in specs:
            ex.submit(spec)
        finished = [ex.next_finished() for _ in specs]
    finally:
        ex.close()
    assert not ex.owns_ray and cluster.is_initialized()
    assert {s.method for s, _ in finished} == {"full", "head_only"}
    for spec, records in finished:
        (rec,) = records
        if spec.method == "full":  # died twice (the attempt and one retry): a failed record
            assert rec.status != "done" and "Worker" in rec.error, rec.error
        else:  # died once, then ran
            assert rec.status == "done", rec.error
    assert sorted(len(p.read_text()) for p in (tmp_path / "attempts").iterdir()) == [2] * len(specs)


def test_small_adapters_come_back_with_the_record(cluster, sequential, tmp_path):
    """Each task runs on a "node" of its own (an empty folder standing for its disk): completions get their
    sweep adapter from the driver, the driver writes every adapter from the results, records are unchanged."""
    root, nodes = tmp_path / "driver", tmp_path / "nodes"

    def on_a_fresh_node(spec_json: str, root: str, features: str, threads: int, inputs: dict, limit: int) -> dict:
        node = nodes / uuid.uuid4().hex
        spec = json.loads(spec_json)
        if spec["kind"] == "complete":
            (nodes / f"{spec['key']}.inputs").write_text(json.dumps(sorted(inputs)))
        return _execute_json(spec_json, str(node), str(node / "features"), threads, inputs, limit)

    nodes.mkdir()
    plan = build_plan(SMOKE, log=None, cache=root / "plans")
    ex = RayExecutor(root)
    ex.remote = cluster.remote(on_a_fresh_node).options(num_cpus=1, num_gpus=0, max_retries=2)
    with ResultsStore(root / "s.sqlite") as store:
        drive(plan, store, ex)
        records = plan.covered({r.key: r for r in store.records()})
    assert comparable(records) == comparable(sequential.records)
    completions = {r.key: r for r in records if r.experiment == "main" and r.seed == 0}
    assert len(completions) == len(SMOKE.methods)
    for key, rec in completions.items():
        assert json.loads((nodes / f"{key}.inputs").read_text()) == [rec.artifact], "the sweep adapter was not sent"
    for rec in records:
        made_here = pack(root / rec.artifact, SHIP_LIMIT)
        assert made_here and made_here == pack(sequential.root / rec.artifact, SHIP_LIMIT), rec.artifact
    assert not list((root / "artifacts").glob(".*incoming*")) and not list((root / "artifacts").glob(".*old*"))


def test_an_authentication_failure_is_recognised():
    try:
        try:
            raise RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
        except RuntimeError as e:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379") from e
    except ConnectionError as e:
        assert _mentions_auth(e)
    assert not _mentions_auth(ConnectionError("Failed to connect to Ray cluster"))


def _done(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with ResultsStore(path) as s:
            return len(s.records(status="done"))
    except Exception:
        return 0




def _cli(store: Path) -> subprocess.Popen:
    """``peftatlas run --profile smoke --executor ray`` (its own local cluster) in a new process group."""
    return subprocess.Popen([sys.executable, "-m", "peftatlas.cli", "run", "--profile", "smoke", "--executor", "ray",
                             "--store", str(store), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """Whatever the killed driver's local cluster left in its process group (Ray's own fate-sharing ends it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def test_cli_driver_killed_and_restarted_redoes_nothing(tmp_path):
    """The CLI (its own local cluster) is killed after a few records; run again, it keeps each finished
    record as it was and completes the profile."""
    store = tmp_path / "smoke.sqlite"
    proc = _cli(store)
    try:
        deadline = time.time() + 300
        while _done(store) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline
            time.sleep(0.1)
        proc.kill()  # the driver only
        proc.wait()
    finally:
        _stop_group(proc)
    with ResultsStore(store) as s:
        before = {r.key: r for r in s.records(status="done")}
    again = _cli(store)
    try:
        _, err = again.communicate(timeout=300)
    finally:
        _stop_group(again)
    assert again.returncode == 0, err.decode()[-3000:]
    with ResultsStore(store) as s:
        after = {r.key: r for r in s.records()}
    assert 3 <= len(before) < TOTAL and len(after) == TOTAL
    assert all(r.status == "done" for r in after.values())
    for key, rec in before.items():
        assert unchanged(rec, after[key]), "a finished run was redone or changed"
    assert Counter(r.experiment for r in after.values())["learning_curve"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_line(proc: subprocess.Popen, text: bytes, deadline: float) -> None:
    """Read ``proc``'s output until a line holds ``text`` (the rest is drained in the background)."""
    lines: list[bytes] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    while not found.wait(0.5):
        assert proc.poll() is None and time.time() < deadline, b"".join(lines).decode()[-3000:]


@pytest.mark.slow
def test_cli_joins_a_ray_start_head_on_loopback(tmp_path):
    """``--address 127.0.0.1:PORT`` joins a ``ray start --head`` cluster kept on loopback (single-node
    clustering, a token of its own); without the token, the failure says to set RAY_AUTH_MODE=token."""
    port, temp = _free_port(), tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths: ≤ 107 bytes
    env = dict(ENV, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
                             "--port", str(port), "--ray-client-server-port", str(_free_port()),
                             "--node-ip-address", "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    run = [sys.executable, "-m", "peftatlas.cli", "run", "--profile", "smoke", "--methods", "head_only",
           "--executor", "ray", "--address", address, "--quiet"]
    try:
        _wait_for_line(head, b"Ray runtime started", time.time() + 180)
        joined = subprocess.run([*run, "--store", str(tmp_path / "a.sqlite")], env=env, capture_output=True,
                                timeout=300)
        assert joined.returncode == 0, joined.stderr.decode()[-3000:]
        without = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        refused = subprocess.run([*run, "--store", str(tmp_path / "b.sqlite")], capture_output=True, timeout=300,
                                 env=dict(without, RAY_AUTH_TOKEN_PATH=str(tmp_path / "no-token")))
        assert refused.returncode != 0 and b"RAY_AUTH_MODE=token" in refused.stderr, refused.stderr.decode()[-3000:]
    finally:
        _stop_group(head)
        head.wait(60)
        shutil.rmtree(temp, ignore_errors=True)
    with ResultsStore(tmp_path / "a.sqlite") as s:
        assert len(s.records(status="done")) == len(SMOKE.lr_factors) + len(SMOKE.seeds)
