"""The ``ray`` executor: each run a Ray task on a cluster (``peftatlas run --executor ray``; extra ``peftatlas[ray]``).

::

    address None:            start_local()  → a single-node cluster in this process, on 127.0.0.1 only
    address "auto"/HOST:PORT: join()        → a running cluster (``ray start``); its resources are its own
    per spec: task = execute_remote.options(num_cpus=c, num_gpus=g, max_retries=R).remote(spec)
    driver:   ray.wait(tasks, num_returns=1) → records → the driver's store.put   (streamed, one by one)

Declared resources: ``num_gpus=1`` per run when the cluster has GPUs, else ``cpus_per_run`` CPUs
(torch runs that many threads). A worker or node lost mid-run makes Ray retry the task, at most
``max_retries`` times (system failures only: a run that raises is a failed *record*, not a retry);
a task that still fails becomes a failed record and the profile goes on. Records come back to the
driver, the only process that writes the SQLite store, so killing the driver loses nothing finished:
started again, it resumes from the store.

Adapters: the worker saves each run's adapter under the driver's artifact path on its own node.
One of at most ``ship_limit`` bytes (16 MiB; a PEFT adapter at a 0.1–1 % budget of MiniLM is
under 1 MB, MiniLM's full fine-tuning ΔW of 91 MB is not shipped) also comes back with the records,
and the driver writes it under its artifact folder (:func:`place`: written beside the folder, then
renamed into place). A completion (a main seed evaluated from its sweep run's adapter) is sent that
adapter the same way. So the artifact folder need not be shared between nodes unless an adapter is
larger than ``ship_limit`` (then ``--artifacts`` on a shared filesystem); the path itself must be
writable on every node.

The local cluster stays on loopback. Ray replaces a loopback node address (``_node_ip_address=
"127.0.0.1"``, ``ray start --node-ip-address 127.0.0.1``) with the address the machine routes
outward (``ray._private.services.resolve_ip_for_localhost``) unless multi-node clustering is off, as
it is by default on macOS and Windows; :func:`start_local` turns it off while the cluster starts
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), so the GCS, the raylet and the workers bind 127.0.0.1.
In Ray 2.60 a cluster started by ``ray start`` requires an authentication token once
``~/.ray/auth_token`` exists (any local ``ray.init()`` writes one), and a driver given an explicit
address does not send it unless ``RAY_AUTH_MODE=token``: :func:`join` says so when that is the failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .execute import RunContext, base_record, execute
from .runspec import RunSpec
from .store import RunRecord

LOOPBACK = "127.0.0.1"
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps a loopback node address as given
AUTH_HINT = ("the cluster asks for an authentication token: set RAY_AUTH_MODE=token for this driver, with the "
             "cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN (or start the cluster with "
             "RAY_AUTH_MODE=disabled)")

SHIP_LIMIT = 16 * 2**20  # bytes: adapters up to this size come back with their record (and go out to completions)

Files = dict[str, bytes]  # an adapter folder's files: path inside the folder → content

_CONTEXTS: dict[tuple[str, str, int], RunContext] = {}


def _execute_json(spec_json: str, root: str, features: str, threads: int, inputs: dict[str, Files] | None = None,
                  ship_limit: int = 0) -> dict[str, Any]:
    """Worker side: run one spec (a context per worker process, reused across its tasks).

    ``inputs`` (artifact → files: a completion's sweep adapter) are placed first where this node lacks
    them. Returns ``{"records": [json], "artifacts": {artifact: files}}``, the adapters of the records
    that fit in ``ship_limit`` bytes (0: none).
    """
    key = (root, features, threads)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = RunContext(root, features, threads=threads)
    ctx = _CONTEXTS[key]
    for artifact, files in (inputs or {}).items():
        place(ctx.path(artifact), files)
    records = execute(RunSpec.from_dict(json.loads(spec_json)), ctx)
    shipped = {r.artifact: pack(ctx.path(r.artifact), ship_limit) for r in records if r.status == "done" and r.artifact}
    return {"records": [r.to_json() for r in records], "artifacts": {k: v for k, v in shipped.items() if v}}


def pack(folder: Path, limit: int) -> Files | None:
    """``folder``'s files if it exists and they add up to at most ``limit`` bytes, else None."""
    if limit <= 0 or not folder.is_dir():
        return None
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    if sum(p.stat().st_size for p in paths) > limit:
        return None
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths}


def holds(folder: Path, files: Files) -> bool:
    """Whether ``folder`` holds exactly ``files``."""
    if not folder.is_dir():
        return False
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return present == set(files) and all((folder / name).read_bytes() == data for name, data in files.items())


def place(folder: Path, files: Files) -> None:
    """Make ``folder`` hold exactly ``files``, atomically: written beside it, then renamed into place
    (a folder with other content is swapped out and removed). Nothing is written if it already does."""
    if holds(folder, files):
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".{folder.name}.incoming-", dir=folder.parent))
    for name, data in files.items():
        (incoming / name).parent.mkdir(parents=True, exist_ok=True)
        (incoming / name).write_bytes(data)
    old = folder.parent / f".{folder.name}.old-{incoming.name.rsplit('-', 1)[-1]}"
    if folder.exists():
        folder.rename(old)
    incoming.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def require_ray() -> Any:
    """The ``ray`` module, or a ValueError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("the ray executor needs Ray: pip install 'peftatlas[ray]'") from None
    return ray


@contextmanager
def _single_node(ray: Any) -> Iterator[None]:
    """Multi-node clustering off (module docstring) in this process and the processes it starts meanwhile."""
    constants = ray._private.ray_constants
    saved_env, saved = os.environ.get(SINGLE_NODE_ENV), getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[SINGLE_NODE_ENV] = "0"
    if saved is not None:
        constants.ENABLE_RAY_CLUSTER = False  # read at import; ray may already be imported
    try:
        yield
    finally:
        if saved is not None:
            constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(SINGLE_NODE_ENV, None)
        else:
            os.environ[SINGLE_NODE_ENV] = saved_env


def start_local(ray: Any, **init_kwargs: Any) -> None:
    """Start a single-node Ray cluster owned by this process, every address on 127.0.0.1.

    ``init_kwargs`` go to ``ray.init`` (e.g. ``num_cpus=2``; default: the machine's CPUs and GPUs).
    """
    with _single_node(ray):
        ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address=LOOPBACK, **init_kwargs)


def _mentions_auth(error: BaseException | None) -> bool:
    """Whether ``error`` or an exception it was raised from is Ray's missing/incorrect token error."""
    while error is not None:
        if "uthentication" in str(error) or type(error).__name__ == "AuthenticationError":
            return True
        error = error.__cause__ or error.__context__
    return False


def join(ray: Any, address: str, **init_kwargs: Any) -> None:
    """Connect to a running cluster (``"auto"`` or ``HOST:PORT``); a token failure says what to set."""
    try:
        ray.init(address=address, log_to_driver=False, **init_kwargs)
    except ConnectionError as e:
        if _mentions_auth(e):
            raise ConnectionError(f"{e}: {AUTH_HINT}") from e
        raise


class RayExecutor:
    """Runs specs as Ray tasks (module docstring); ``capacity`` defaults to the cluster's run slots.

    ``address``: None starts a local cluster (:func:`start_local`), ``"auto"`` or ``HOST:PORT`` joins
    one; if Ray is already initialised in this process, its cluster is used and left running.
    ``ship_limit``: adapters up to this many bytes travel with the task's result (0: never).
    """

    def __init__(self, root: str | Path, address: str | None = None, cpus_per_run: int = 1,
                 gpus_per_run: float | None = None, max_retries: int = 2, capacity: int | None = None,
                 init_kwargs: dict[str, Any] | None = None, ship_limit: int = SHIP_LIMIT) -> None:
        ray = require_ray()
        self.ray = ray
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray and address:
            join(ray, address, **(init_kwargs or {}))
        elif self.owns_ray:
            start_local(ray, **(init_kwargs or {}))
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        self.gpus_per_run = gpus_per_run if gpus_per_run is not None else (1.0 if gpus >= 1 else 0.0)
        self.cpus_per_run = cpus_per_run
        slots = int(gpus // self.gpus_per_run) if self.gpus_per_run else int(resources.get("CPU", 1) // cpus_per_run)
        self.capacity = capacity or max(1, slots)
        self.root = str(Path(root).resolve())
        self.features = str(Path(self.root) / "features")
        self.ship_limit = ship_limit
        self.remote = ray.remote(_execute_json).options(num_cpus=cpus_per_run, num_gpus=self.gpus_per_run,
                                                        max_retries=max_retries, retry_exceptions=False)
        self.pending: dict[Any, RunSpec] = {}

    def path(self, artifact: str) -> Path:
        """Where the driver keeps ``artifact`` (relative to the store's folder, or absolute)."""
        return Path(self.root) / artifact

    def inputs(self, spec: RunSpec) -> dict[str, Files]:
        """The small adapters ``spec`` reads: a completion's sweep adapter, if the driver holds it."""
        artifact = (spec.twin or {}).get("artifact")
        files = pack(self.path(artifact), self.ship_limit) if artifact else None
        return {artifact: files} if files else {}

    def submit(self, spec: RunSpec) -> None:
        ref = self.remote.remote(json.dumps(spec.to_dict()), self.root, self.features, self.cpus_per_run,
                                 self.inputs(spec), self.ship_limit)
        self.pending[ref] = spec

    def next_finished(self) -> tuple[RunSpec, list[RunRecord]]:
        ready, _ = self.ray.wait(list(self.pending), num_returns=1)
        spec = self.pending.pop(ready[0])
        try:
            result = self.ray.get(ready[0])
        except Exception as e:  # retries exhausted (worker or node lost every time): a failed record
            return spec, [dataclasses.replace(base_record(spec), error=f"{type(e).__name__}: {e}"[:2000])]
        for artifact, files in result["artifacts"].items():
            place(self.path(artifact), files)
        return spec, [RunRecord.from_json(t) for t in result["records"]]

    def close(self) -> None:
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        if self.owns_ray:
            self.ray.shutdown()
