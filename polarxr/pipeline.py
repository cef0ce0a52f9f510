"""Unattended processing of an inbox of Sentinel-1 scenes, recorded in a run ledger.

:func:`process_inbox` finds the scenes of an inbox (a folder of GeoTIFFs, or a STAC ItemCollection /
Catalog / Collection JSON), segments those not yet done, several at once on a ``distributed`` cluster,
and writes per scene, in ``out_dir/<scene id>/``::

    <scene>_class.tif         class map COG, uint8 L=0 W=1 I=2 255 nodata, the scene's grid and CRS
    <scene>_probability.zarr  class probabilities, uint8 (class, y, x), p x 254 (255 nodata; CF scale_factor)
    <scene>_quicklook.png     quicklook of the segmentation beside the scene
    <scene>_lines.gpkg        coastline, ice edge (sub-pixel, from the probabilities) and fronts as lines
    <scene>_icebergs.gpkg     iceberg centroids with their areas (:mod:`polarxr.observations`)
    <scene>.json              STAC Item describing them (see :mod:`polarxr.stac`)

Every scene's status is kept in ``out_dir/ledger.sqlite`` (:mod:`polarxr.ledger`). Running it twice
processes nothing twice; a killed run leaves no half-written output (every output is written under a
temporary name and renamed) and its ``running`` rows are reset by the next run; a scene that fails is
recorded with its error and the others go on; ``retry_failed`` tries failed scenes again. A ``done``
scene whose outputs went missing or changed size (e.g. truncated by a crash of another tool) is
processed again, with a message.

:func:`watch` repeats this every ``interval_s`` seconds (``polarxr process --watch --interval 10m``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from polarxr.errors import PolarxrError, SceneError
from polarxr.ingest.safe import is_product
from polarxr.io import TEMPORARY_NAME, as_path, file_sha256, is_url, remove, size_of
from polarxr.ledger import Ledger, Owner, SceneRecord, now_iso
from polarxr.outputs import CLASS_MAP_SUFFIX, PROBABILITIES_SUFFIX, QUICKLOOK_SUFFIX
from polarxr.region import check_intersects, read_region

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.sqlite"
#: The geocoded scene ingested from a delivered product (``.SAFE`` / ``.zip``) before it is segmented.
INGESTED_SUFFIX = "_scene.tif"
#: Default chunk edge (px) of the blockwise inference.
DEFAULT_CHUNK = 2048


# --------------------------------------------------------------------------------------------- inbox
@dataclass(frozen=True)
class InboxScene:
    """A scene found in the inbox: id (product name), local path, matching ice chart, problem if unusable."""

    scene: str
    path: Path
    chart: Path | None = None
    start: datetime | None = None
    problem: str | None = None


def _is_product(path) -> bool:
    """A Sentinel-1 product as delivered (read from local disk only; object-storage inboxes hold GeoTIFFs)."""
    return not is_url(path) and is_product(path)


def find_scenes(inbox: str | Path) -> list[InboxScene]:
    """The scenes of an inbox folder (``*.tif``, ``*.tiff``, with ``seaice_s1_*.shp`` charts beside them) or
    of a STAC ItemCollection / Catalog / Collection / Item JSON file, in acquisition order.

    A scene whose name is not a Sentinel-1 product name, or whose STAC asset is not a local file, is
    listed with its ``problem`` (it is recorded as failed, not processed).
    """
    from polarxr.scenes import chart_name_for, parse_product_name, scene_catalog

    inbox = as_path(inbox)
    if inbox.is_file():
        from polarxr.stac import read_scene_hrefs

        found = []
        for item_id, href in read_scene_hrefs(inbox):
            if "://" in href and not href.startswith("s3://"):
                found.append(InboxScene(item_id, Path(href), problem=f"{href}: remote scene assets are not read; "
                                        "download the scene and reference the local file"))
                continue
            path = as_path(href)
            try:
                start = parse_product_name(path).start
            except ValueError as err:
                found.append(InboxScene(path.stem, path, problem=str(err)))
                continue
            chart = path.with_name(chart_name_for(start))
            found.append(InboxScene(path.stem, path, chart if chart.exists() else None, start))
        return sorted(found, key=lambda s: (s.start is None, s.start or datetime.min, s.scene))
    if not inbox.exists():
        raise SceneError(inbox, "inbox does not exist (a folder of scene GeoTIFFs or a STAC JSON file)")
    catalog = scene_catalog(inbox)
    found = _products(inbox)
    for row in catalog.itertuples(index=False):
        start = getattr(row, "start", None)
        if start is None or start != start:  # NaT / NaN: not a product name
            found.append(InboxScene(row.scene, as_path(row.path), problem=(
                f"{as_path(row.path).name}: not a Sentinel-1 product name; the acquisition time is read from it")))
        else:
            found.append(InboxScene(row.scene, as_path(row.path), row.chart, start.to_pydatetime()))
    return sorted(found, key=lambda s: (s.start is None, s.start or datetime.min, s.scene))


def _products(inbox: Path) -> list[InboxScene]:
    """Sentinel-1 products as delivered in an inbox folder (``*.SAFE`` folders, ``*.zip``), keyed by product name.

    A product delivered twice (as a folder and as a zip, say) is listed once: the ``.SAFE`` folder wins.
    """
    from polarxr.scenes import chart_name_for, parse_product_name

    found: dict[str, InboxScene] = {}
    candidates = sorted(p for p in inbox.glob("*.SAFE") if p.is_dir()) + sorted(inbox.glob("*.zip"))
    for path in candidates:
        scene = path.name.split(".")[0]
        if scene in found:
            continue
        try:
            start = parse_product_name(scene).start
        except ValueError as err:
            found[scene] = InboxScene(scene, path, problem=str(err))
            continue
        chart = path.with_name(chart_name_for(start))
        found[scene] = InboxScene(scene, path, chart if chart.exists() else None, start)
    return list(found.values())


# --------------------------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class SceneOutputs:
    """Where one scene's outputs go: ``out_dir/<scene>/``."""

    folder: Path
    class_map: Path
    probabilities: Path
    quicklook: Path
    stac_item: Path
    lines: Path
    icebergs: Path

    @classmethod
    def for_scene(cls, out_dir: str | Path, scene: str) -> SceneOutputs:
        from polarxr.observations.products import ICEBERGS_SUFFIX, LINES_SUFFIX

        folder = as_path(out_dir) / scene
        return cls(folder, folder / f"{scene}{CLASS_MAP_SUFFIX}", folder / f"{scene}{PROBABILITIES_SUFFIX}",
                   folder / f"{scene}{QUICKLOOK_SUFFIX}", folder / f"{scene}.json",
                   folder / f"{scene}{LINES_SUFFIX}", folder / f"{scene}{ICEBERGS_SUFFIX}")

    def paths(self) -> dict[str, Path]:
        """Output paths by kind, as the ledger records them."""
        return {"class_map": self.class_map, "probabilities": self.probabilities, "quicklook": self.quicklook,
                "lines": self.lines, "icebergs": self.icebergs, "stac_item": self.stac_item}


def output_size(path: str | Path) -> int:
    """Bytes of a file, or of all files of a folder (a Zarr store); -1 when missing."""
    return size_of(path)


def check_outputs(record: SceneRecord, full: bool = True) -> str | None:
    """Why a ``done`` row's outputs cannot be trusted (missing, changed size, unreadable), or None.

    ``full=False`` is the check of every poll: the outputs exist and the files (not the Zarr stores,
    whose files would all be visited) have their recorded sizes, from one ``stat`` each. ``full`` (``process
    --verify``) also sums every store's files and opens the class map.
    """
    outputs, sizes = record.outputs(), record.sizes()
    if "class_map" not in outputs:
        return "no class map is recorded"
    for kind, path in outputs.items():
        if not path.exists():
            return f"output {path} is missing"
        if not full and path.is_dir():
            continue
        if kind in sizes and output_size(path) != sizes[kind]:
            return f"output {path} has changed size ({sizes[kind]} -> {output_size(path)} B; truncated or overwritten?)"
    if not full:
        return None
    try:
        with rasterio.open(str(outputs["class_map"])) as src:
            if src.count != 1 or src.dtypes[0] != "uint8":
                return f"output {outputs['class_map']} is not a class map (bands {src.count}, {src.dtypes[0]})"
    except RasterioError as err:
        return f"output {outputs['class_map']} is unreadable ({err})"
    return None


def _remove_leftovers(folder: Path) -> list[Path]:
    """Delete temporaries a killed run left in ``folder`` (``.<name>.tmp-XXXXXXXX`` and the like)."""
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if TEMPORARY_NAME.match(path.name):
                remove(str(path))
                removed.append(path)
    return removed


def model_version(checkpoint: str | Path) -> str:
    """The model version recorded with each scene (:func:`polarxr.checkpoints.checkpoint_version`)."""
    from polarxr.checkpoints import checkpoint_version

    return checkpoint_version(checkpoint)


# --------------------------------------------------------------------------------------------- report
@dataclass
class SceneOutcome:
    """What a run did with one scene.

    ``status``: ``done`` / ``failed`` (processed in this run), ``retry`` (failed transiently in this run,
    to be tried again), ``waiting`` (failed transiently before, its backoff not over), ``up-to-date``
    (done earlier), ``failed-before`` (failed earlier, not retried), ``busy`` (another live run is
    processing it).
    """

    scene: str
    status: str
    seconds: float | None = None
    error: str | None = None
    attempts: int = 0
    outputs: dict[str, Path] = field(default_factory=dict)
    message: str | None = None


@dataclass
class ProcessReport:
    """The result of one :func:`process_inbox` call."""

    run_id: str
    inbox: Path
    out_dir: Path
    ledger: Path
    started: str
    seconds: float = 0.0
    outcomes: list[SceneOutcome] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def with_status(self, *statuses: str) -> list[SceneOutcome]:
        """Outcomes with any of ``statuses``."""
        return [o for o in self.outcomes if o.status in statuses]

    @property
    def processed(self) -> list[SceneOutcome]:
        """Scenes this run attempted (done, failed, or to be retried)."""
        return self.with_status("done", "failed", "retry")

    @property
    def failed(self) -> list[SceneOutcome]:
        """Scenes that failed in this run."""
        return self.with_status("failed")


# --------------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class RetryPolicy:
    """A scene whose attempt failed transiently is tried again, at most ``max_attempts`` attempts in all,
    each after ``backoff_s`` seconds doubled per attempt (60 s, 120 s, ...); then it is ``failed``."""

    max_attempts: int = 3
    backoff_s: float = 60.0


@dataclass
class _SceneResult:
    predict_seconds: float | None
    checksum: str
    metrics: dict | None
    sizes: dict[str, int]
    message: str | None


class _Heartbeat(threading.Thread):
    """Refreshes the heartbeat of a run's ``running`` rows every ``every_s`` seconds, on its own connection."""

    def __init__(self, ledger_path: Path, run_id: str, every_s: float):
        super().__init__(name="polarxr-ledger-heartbeat", daemon=True)
        self._path, self._run_id, self._every = ledger_path, run_id, every_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        with Ledger(self._path) as ledger:
            while not self._stop_event.wait(self._every):
                try:
                    ledger.heartbeat(self._run_id)
                except PolarxrError as err:  # a busy ledger: the next beat will do
                    log.warning("ledger heartbeat skipped: %s", err)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def _describe(err: BaseException) -> str:
    """One line for the ledger: our errors as they are, others with their type."""
    if isinstance(err, PolarxrError):
        return str(err)
    return f"{type(err).__name__}: {err}".splitlines()[0][:2000]


def _process_scene(entry: InboxScene, outputs: SceneOutputs, checkpoint: Path, chunk: int, client,
                   region, properties: dict) -> _SceneResult:
    """Segment one scene and write its outputs and STAC Item (runs in a thread of the client process)."""
    from polarxr.predict import predict_scene
    from polarxr.scenes import open_scene, valid_footprint
    from polarxr.stac import scene_item, write_item

    for path in _remove_leftovers(outputs.folder):
        log.info("%s: removed %s left by an interrupted run", entry.scene, path.name)
    if region is not None:
        grid = open_scene(entry.path)
        # the swath's valid data, not the file's rectangle: an EW swath fills only part of it (a delivered
        # product is checked by its grid's rectangle, before the costly ingestion)
        footprint = grid.rio.bounds() if is_product(entry.path) else valid_footprint(entry.path)
        check_intersects(region, footprint, grid.rio.crs, entry.path)
    scene_path = entry.path
    if _is_product(entry.path):
        # the product's manifest lists every file's MD5: its digest identifies the delivery
        checksum = file_sha256(entry.path / "manifest.safe" if entry.path.is_dir() else entry.path)
        scene_path = _ingest_for(entry, outputs, checkpoint)
    else:
        checksum = file_sha256(entry.path)
    message, metrics = None, None
    result = predict_scene(scene_path, checkpoint, outputs.class_map, probabilities=outputs.probabilities,
                           chunk=chunk, client=client, quicklook=outputs.quicklook,
                           model_version=properties["polarxr:model"])
    if entry.chart is not None:
        from polarxr.evaluate import evaluate_prediction

        # Not client.as_current(): it flips dask's global config, which threads would race on; the
        # metrics run on the default scheduler (the local cluster's client, or threads here).
        try:
            metrics = evaluate_prediction(str(outputs.class_map), entry.chart)
        except PolarxrError as err:  # a bad chart costs the metrics, not the product
            message = f"metrics against the chart skipped: {err}"
    from polarxr.observations.products import write_observations

    observed = write_observations(outputs.class_map, outputs.lines, outputs.icebergs,
                                  probabilities=outputs.probabilities if outputs.probabilities.exists() else None)
    written = {k: p for k, p in outputs.paths().items() if k != "stac_item" and p.exists()}
    properties = {**properties, "polarxr:source_sha256": checksum, **_metrics_summary(metrics),
                  **_metrics_summary(observed)}
    item = scene_item(entry.scene, entry.path, outputs.stac_item, written, properties=properties)
    write_item(item, outputs.stac_item)
    sizes = {k: output_size(p) for k, p in outputs.paths().items() if p.exists()}
    return _SceneResult(getattr(result, "seconds", None), checksum, metrics, sizes, message)


def _ingest_for(entry: InboxScene, outputs: SceneOutputs, checkpoint: Path) -> Path:
    """Geocode a delivered product into ``<scene>_scene.tif`` in the form the checkpoint reads.

    A checkpoint trained on the 8-bit rendering (bands ``HH, HV, HH-HV``) gets the 8-bit product,
    others linear float sigma0. Runs on the default dask scheduler (the cluster's client).
    """
    from polarxr.ingest import ingest_product
    from polarxr.train import read_checkpoint

    bands = list(read_checkpoint(checkpoint).get("band_names", []))
    kind = "8bit" if len(bands) == 3 else "float"
    target = outputs.folder / f"{entry.scene}{INGESTED_SUFFIX}"
    ingest_product(entry.path, outputs.folder, kind=kind, scene_path=target, item=False)
    return target


def _metrics_summary(metrics: dict | None) -> dict:
    """The scalar metrics (accuracy, mean IoU, ...) for the STAC Item; matrices stay in the ledger."""
    if not metrics:
        return {}
    return {f"polarxr:{k}": v if isinstance(v, int) else float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}  # v == v: not NaN


def default_concurrency(client) -> int:
    """Scenes in flight at once: one per worker, at least two (a scene's writing overlaps another's compute)."""
    try:
        n_workers = len(client.scheduler_info().get("workers", {}))
    except (OSError, AttributeError):
        n_workers = 1
    return max(2, n_workers)


def process_inbox(
    inbox: str | Path,
    out_dir: str | Path,
    checkpoint: str | Path,
    client=None,
    retry_failed: bool = False,
    chunk: int = DEFAULT_CHUNK,
    max_concurrent: int | None = None,
    region: str | Path | None = None,
    ledger_path: str | Path | None = None,
    on_scene: Callable[[SceneOutcome], None] | None = None,
    heartbeat_s: float = 30.0,
    verify: bool = False,
    retry: RetryPolicy = RetryPolicy(),
    clock: Callable[[], float] = time.time,
) -> ProcessReport:
    """Segment every scene of ``inbox`` that the ledger does not record as done; return what happened.

    ``inbox``: a folder of scene GeoTIFFs or a STAC JSON file. ``out_dir``: outputs in
    ``out_dir/<scene>/`` and the ledger ``out_dir/ledger.sqlite`` (or ``ledger_path``; keep it on a local
    disk). ``client``: a ``distributed.Client``, or a zero-argument callable returning a context manager
    that yields one (e.g. ``lambda: get_client(scheduler=...)``), entered only when some scene needs
    processing; by default a local cluster (:func:`polarxr.cluster.get_client`), likewise only then. ``max_concurrent`` scenes are in flight at once (default: one per
    worker, at least two). ``region``: a polygon file; scenes that miss it are recorded as failed.
    ``chunk``: block edge of the inference in px. ``on_scene`` is called as each scene finishes.
    ``verify``: audit every ``done`` scene's outputs in full (every file of every store, every class map
    opened); by default a poll only checks that they exist with their recorded sizes. ``retry``: how often
    and when a scene that failed for a reason other than its input (a lost worker, a full disk) is tried
    again before it is recorded as failed; ``clock`` gives the time (seconds) for its backoff.

    Raises :class:`~polarxr.ledger.LedgerError` for a ledger that is not one or from a newer polarxr,
    :class:`ModelError` for a missing checkpoint, :class:`SceneError` for a missing inbox. Problems with
    single scenes never raise: they are recorded and reported.
    """
    from polarxr import __version__

    inbox, out_dir, checkpoint = as_path(inbox), as_path(out_dir), as_path(checkpoint)
    if is_url(out_dir) and ledger_path is None:
        raise PolarxrError(out_dir, "is on object storage: give a ledger on a local disk (--ledger PATH)")
    tic = time.perf_counter()
    model_hash = model_version(checkpoint)
    region_frame = read_region(region) if region else None
    entries = find_scenes(inbox)  # a missing inbox is reported before anything is written
    if not is_url(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    ledger_path = Path(ledger_path) if ledger_path else out_dir / LEDGER_NAME
    run_id = uuid.uuid4().hex[:12]
    report = ProcessReport(run_id, inbox, out_dir, ledger_path, now_iso())
    with Ledger(ledger_path) as ledger:
        report.messages += ledger.recover_stale(active_run=run_id)
        todo = _plan(ledger, entries, out_dir, retry_failed, report, verify, retry, clock())
        if todo:
            with ExitStack() as stack:
                if client is None or not hasattr(client, "submit"):
                    from polarxr.cluster import get_client

                    client = stack.enter_context((client or get_client)())
                owner = Owner.this_process(run_id)
                ledger.start_run(owner, model_hash, __version__)
                properties = {"polarxr:version": __version__, "polarxr:model": model_hash,
                              "polarxr:checkpoint": checkpoint.name}
                try:
                    _execute(ledger, todo, owner, model_hash, __version__, retry_failed, out_dir, checkpoint,
                             chunk, client, region_frame, properties, max_concurrent or default_concurrency(client),
                             heartbeat_s, report, on_scene, retry)
                finally:
                    ledger.finish_run(run_id, len(report.with_status("done")), len(report.failed))
    report.seconds = time.perf_counter() - tic
    return report


def _plan(ledger: Ledger, entries: list[InboxScene], out_dir: Path, retry_failed: bool,
          report: ProcessReport, verify: bool = False, retry: RetryPolicy | None = None,
          now: float | None = None) -> list[InboxScene]:
    """Register the inbox's scenes, re-queue done scenes whose outputs are broken, return those to process
    (less those waiting out their retry backoff)."""
    retry = retry or RetryPolicy()
    now = time.time() if now is None else now
    todo = []
    for entry in entries:
        size, mtime = _signature(entry.path)
        if (message := ledger.register(entry.scene, entry.path, size, mtime)) is not None:
            report.messages.append(message)
        record = ledger.get(entry.scene)
        if record.status == "done" and (problem := check_outputs(record, full=verify)) is not None:
            message = f"{entry.scene}: {problem}; processing it again"
            ledger.reset(entry.scene, message)
            report.messages.append(message)
            record = ledger.get(entry.scene)
        outputs = SceneOutputs.for_scene(out_dir, entry.scene).paths()
        due = Ledger.retry_at(record, retry.backoff_s)
        if due is not None and now < due:
            report.outcomes.append(SceneOutcome(entry.scene, "waiting", record.seconds, record.error, record.attempts,
                                                message=f"tried again after {datetime.fromtimestamp(due):%H:%M:%S}"))
        elif record.status == "pending" or (record.status == "failed" and retry_failed):
            todo.append(entry)
        elif record.status == "done":
            report.outcomes.append(SceneOutcome(entry.scene, "up-to-date", record.seconds, attempts=record.attempts,
                                                outputs=record.outputs()))
        elif record.status == "failed":
            report.outcomes.append(SceneOutcome(entry.scene, "failed-before", record.seconds, record.error,
                                                record.attempts, message="use --retry-failed to try it again"))
        else:
            report.outcomes.append(SceneOutcome(entry.scene, "busy", attempts=record.attempts, outputs=outputs,
                                                message=f"being processed by pid {record.pid} on {record.host}"))
    return todo


def _signature(path: Path) -> tuple[int, float]:
    """(size, mtime) by which the ledger notices a changed input; -1 when missing.

    A delivered product is identified by its name (it carries the product id) and its manifest: the same
    product as ``.SAFE`` or ``.zip``, delivered again, is the same input (manifest size, mtime 0).
    """
    if not path.exists():
        return -1, 0.0
    if _is_product(path):
        if path.is_dir():
            manifest = path / "manifest.safe"
            return (manifest.stat().st_size if manifest.exists() else -1), 0.0
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                sizes = [i.file_size for i in archive.infolist() if i.filename.endswith("/manifest.safe")]
        except (zipfile.BadZipFile, OSError):
            return path.stat().st_size, path.stat().st_mtime
        return (sizes[0] if sizes else -1), 0.0
    return path.stat().st_size, path.stat().st_mtime


def _execute(ledger, todo, owner, model_hash, version, retry_failed, out_dir, checkpoint, chunk, client, region,
             properties, max_concurrent, heartbeat_s, report, on_scene, retry: RetryPolicy) -> None:
    """Claim and process ``todo`` with at most ``max_concurrent`` scenes in flight; record each result."""
    queue: deque[InboxScene] = deque(todo)
    in_flight: dict[Future, tuple[InboxScene, float]] = {}
    heartbeat = _Heartbeat(ledger.path, owner.run_id, heartbeat_s)
    heartbeat.start()
    pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="polarxr-scene")

    def record(outcome: SceneOutcome) -> None:
        report.outcomes.append(outcome)
        if on_scene is not None:
            on_scene(outcome)

    try:
        while queue or in_flight:
            while queue and len(in_flight) < max_concurrent:
                entry = queue.popleft()
                if not ledger.claim(entry.scene, owner, model_hash, version, retry_failed):
                    row = ledger.get(entry.scene)
                    status = {"running": "busy", "done": "up-to-date"}.get(row.status, "failed-before")
                    record(SceneOutcome(entry.scene, status, row.seconds, row.error, row.attempts,
                                        message="handled by another run meanwhile"))
                    continue
                if entry.problem is not None:
                    ledger.mark_failed(entry.scene, owner.run_id, entry.problem, 0.0)
                    record(SceneOutcome(entry.scene, "failed", 0.0, entry.problem, ledger.get(entry.scene).attempts))
                    continue
                outputs = SceneOutputs.for_scene(out_dir, entry.scene)
                future = pool.submit(_process_scene, entry, outputs, checkpoint, chunk, client, region, properties)
                in_flight[future] = (entry, time.perf_counter())
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                entry, started = in_flight.pop(future)
                record(_settle(ledger, owner.run_id, entry, future, time.perf_counter() - started, out_dir, retry))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        released = ledger.release(owner.run_id, "the run was interrupted before this scene finished")
        log.warning("run %s interrupted; %d scene(s) set back to pending", owner.run_id, released)
        raise
    finally:
        heartbeat.stop()
    pool.shutdown(wait=True)


def _transient(err: BaseException) -> bool:
    """Whether a failure may pass on its own (a lost worker or scheduler, a full disk, a replaced
    checkpoint) rather than come from the scene itself (a :class:`PolarxrError` about the input)."""
    from polarxr.checkpoints import CheckpointChanged

    if isinstance(err, CheckpointChanged):
        return True
    if isinstance(err, PolarxrError):  # a block failure is named after its scene: judge what caused it
        cause = err.__cause__
        return cause is not None and not isinstance(cause, PolarxrError) and _transient(cause)
    return True


def _settle(ledger: Ledger, run_id: str, entry: InboxScene, future: Future, seconds: float,
            out_dir: Path, retry: RetryPolicy | None = None) -> SceneOutcome:
    """Record a finished scene future in the ledger: done, failed, or (a transient failure within the
    attempt budget) pending again for a later retry."""
    retry = retry or RetryPolicy()
    outputs = SceneOutputs.for_scene(out_dir, entry.scene).paths()
    attempts = ledger.get(entry.scene).attempts
    try:
        result: _SceneResult = future.result()
    except Exception as err:  # any failure of one scene is recorded; the others go on
        log.debug("%s failed", entry.scene, exc_info=True)
        error = _describe(err)
        again = _transient(err) and attempts < retry.max_attempts
        if not ledger.mark_failed(entry.scene, run_id, error, seconds, retry=again):
            return _lost(entry, seconds, attempts)
        if again:
            return SceneOutcome(entry.scene, "retry", seconds, error, attempts,
                                message=f"attempt {attempts} of {retry.max_attempts}; tried again after "
                                        f"{retry.backoff_s * 2 ** (attempts - 1):g} s")
        return SceneOutcome(entry.scene, "failed", seconds, error, attempts)
    written = {k: p for k, p in outputs.items() if k in result.sizes}
    if not ledger.mark_done(entry.scene, run_id, written, result.sizes, seconds, result.predict_seconds,
                            result.checksum, result.metrics, result.message):
        return _lost(entry, seconds, attempts)
    return SceneOutcome(entry.scene, "done", seconds, attempts=ledger.get(entry.scene).attempts, outputs=written,
                        message=result.message)


def _lost(entry: InboxScene, seconds: float, attempts: int) -> SceneOutcome:
    return SceneOutcome(entry.scene, "busy", seconds, attempts=attempts,
                        message="another run took this scene over meanwhile (this run's lease ran out); "
                                "its result was not recorded")


# --------------------------------------------------------------------------------------------- watching
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", re.IGNORECASE)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds of a duration such as ``30s``, ``10m``, ``1h``, ``1h30m``, ``2d`` or a bare number of seconds.

    Raises ``ValueError`` for anything else or a duration that is not positive.
    """
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        compact = str(text).strip().replace(" ", "")
        parts = list(_DURATION.finditer(compact))
        if not compact or "".join(p.group(0) for p in parts) != compact:
            raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 10m, 1h or 1h30m")
        seconds = sum(float(p.group(1)) * _UNIT_S[(p.group(2) or "").lower() or None] for p in parts)
    if not seconds > 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


def watch(
    inbox: str | Path | Callable[[], Path],
    out_dir: str | Path,
    checkpoint: str | Path,
    interval_s: float | str = 600.0,
    max_cycles: int | None = None,
    client=None,
    on_report: Callable[[ProcessReport], None] | None = None,
    on_error: Callable[[PolarxrError], None] | None = None,
    **options,
) -> list[ProcessReport]:
    """Run :func:`process_inbox` every ``interval_s`` (seconds or a duration such as ``"10m"``).

    One cluster serves every cycle (``client`` as in :func:`process_inbox`; a factory or the default
    local cluster is started here, once). A cycle starts ``interval_s``
    after the previous one started (at once if that one took longer). ``on_report`` receives each
    cycle's report. An error of the first cycle (bad ledger, checkpoint, inbox) is raised; later cycles'
    errors (e.g. an unmounted inbox) go to ``on_error`` (default: logged) and the watch goes on.
    Returns the reports after ``max_cycles`` cycles; with ``max_cycles=None`` it runs until interrupted.
    ``inbox`` may be a zero-argument callable returning the inbox, called at the start of every cycle
    (``process --stac-api`` polls the API there); its errors count as the cycle's.
    ``options`` are passed to :func:`process_inbox`.
    """
    interval = parse_duration(interval_s)
    reports: list[ProcessReport] = []
    with ExitStack() as stack:
        if client is None or not hasattr(client, "submit"):
            from polarxr.cluster import get_client

            client = stack.enter_context((client or get_client)())
        for cycle in _cycles(max_cycles):
            started = time.monotonic()
            try:
                current = inbox() if callable(inbox) else inbox
                report = process_inbox(current, out_dir, checkpoint, client=client, **options)
            except PolarxrError as err:
                if cycle == 0:
                    raise
                (on_error or (lambda e: log.error("watch cycle %d failed: %s", cycle + 1, e)))(err)
            else:
                if max_cycles is not None:
                    reports.append(report)
                if on_report is not None:
                    on_report(report)
            if max_cycles is not None and cycle + 1 >= max_cycles:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return reports


def _cycles(max_cycles: int | None) -> Iterator[int]:
    cycle = 0
    while max_cycles is None or cycle < max_cycles:
        yield cycle
        cycle += 1
