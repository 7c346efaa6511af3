"""Command line: compare every pipeline on one shared split of a UTKFace folder.

Run ``python -m benchmarks.run --help``. With no arguments it runs the default
configuration (``benchmarks/default.toml``: raw pixels, HOG, LBP, HOG+LBP, eigenfaces
and dlib descriptors, each with an RBF SVM and with XGBoost, and both CNNs) on the
shared split for all four tasks, and writes into ``benchmarks/results``:

- ``RESULTS.md``: a table per task (best values in bold), plots, the environment and
  the exact command; ``results.csv`` and ``results.json``: the same rows;
- ``plots/``: a bar chart per task and accuracy against training time;
- ``work/``: one record per finished step (``extract/<extractor>.json``,
  ``pipelines/<name>.json``), each pipeline's models, metrics and plots (``runs/``),
  and the subset split of a ``--quick`` or ``--limit`` run.

Every step (an extraction, a pipeline) runs in a child process of its own; its record
is written, atomically, when it ends. A step that raises, or whose process is killed
(out of memory), gets a ``failed`` record and the others still run. Rerunning the same
command resumes: pipelines with a ``done`` record for the same definition, split, data
and seed are not run again (failed ones are retried).

With ``--scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``) the classical pipelines extract
their features and train XGBoost on the workers of a Dask cluster
(:mod:`pipelines.cluster`); the address is recorded in each step's record and in the
report's environment.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import logging
import multiprocessing
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks import steps
from benchmarks.machine import environment
from benchmarks.config import DEFAULT_CONFIG, BenchmarkConfig, load_config
from benchmarks.report import failed_rows, summary_tables, table_rows, write_report
from models.labels import TASKS
from pipelines.cluster import SCHEDULER_ENV, SVM_CLUSTER_LIMIT, scheduler_address
from pipelines.dataset import DatasetIndex, default_data_dir, index_folder
from pipelines.reports import atomic_write_json
from pipelines.run import ALL_CORES, DEFAULT_CACHE, parse_cli_args
from pipelines.splits import DEFAULT_MANIFEST, PARTS, Split, load_or_create_split, names_sha256

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
QUICK_OUT = Path("runs") / "benchmark-quick"
WORK = "work"


class StepFailed(Exception):
    """A step raised, or its process died; ``details`` holds the traceback if any."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class Step:
    """One unit of work and where its record goes."""

    kind: str                   # "extract", "classical" or "cnn"
    name: str
    target: Any                 # feature blocks, ClassicalPipeline or CNNPipeline
    key: str
    record: Path


def subset_split(split: Split, parts: dict[str, DatasetIndex], limit: int, seed: int) -> Split:
    """At most about ``limit`` faces of a split, every part shrunk in proportion.

    Each part keeps its share of faces of every gender x ethnicity stratum (a
    systematic sample over a seeded shuffle), so a subset's test faces are test faces
    of the full split.
    """
    total = sum(len(faces) for faces in parts.values())
    if limit >= total:
        return split
    rng = np.random.default_rng(seed)
    kept = {}
    for part in PARTS:
        faces = parts[part]
        count = max(1, round(limit * len(faces) / total))
        order = rng.permutation(len(faces))
        strata = (faces.gender * 10 + faces.ethnicity)[order]
        position = np.empty(len(faces))
        for stratum in np.unique(strata):
            members = np.flatnonzero(strata == stratum)
            position[members] = (np.arange(len(members)) + 0.5) / len(members)
        chosen = order[np.argsort(position, kind="stable")[:count]]
        kept[part] = [faces.file_names[i] for i in chosen]
    return Split(**kept, seed=split.seed, val_size=split.val_size, test_size=split.test_size,
                 stratify_on=split.stratify_on)


def _key(definition: Any, context: dict[str, Any]) -> str:
    # The Dask scheduler is deliberately not part of a key: a cluster changes where the
    # work runs, not what is computed. Features are identical, and XGBoost's models equal
    # this machine's with subsample=1; with row subsampling (subsample<1, the default
    # 0.8) each worker draws its own rows, so the model differs as with another seed
    # (models.xgboost_models.fit_on_cluster), which a benchmark's resumption accepts.
    # An address also changes whenever a cluster restarts, which would discard finished
    # work. Each record stores the scheduler that ran it instead.
    text = json.dumps({"definition": definition, **context}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finished(step: Step) -> dict[str, Any] | None:
    """The step's record if it finished with the same key, else None."""
    record = _read_record(step.record)
    if record and record.get("status") == "done" and record.get("key") == step.key:
        return record
    return None


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the step's process was killed by {name}{hint}"
    return f"the step's process ended without a result (exit status {exitcode})"


def run_in_child(step: Step, job: steps.Job, log_level: int) -> dict[str, Any]:
    """Run a step in a child process and return its result.

    Raises
    ------
    StepFailed
        If the step raised (message and traceback from the child) or its process died.
    KeyboardInterrupt
        After stopping the child, when interrupted.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["benchmarks.steps"])    # children start in milliseconds
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=steps.child_main, name=f"benchmark {step.name}",
                              args=(sender, step.kind, step.target, job, log_level))
    process.start()
    sender.close()
    try:
        try:
            message = receiver.recv()
        except EOFError:
            process.join()
            raise StepFailed(_death(process.exitcode)) from None
        process.join()
    except BaseException:       # interrupted: stop the child and the workers it started
        _stop(process)
        raise
    finally:
        receiver.close()
    if message[0] == "failed":
        raise StepFailed(message[1], message[2])
    return message[1]


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    """Terminate a step's process group (the step and its workers), killing it if needed."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:     # gone, or not yet the leader of its group
            if process.is_alive():
                process.kill() if sig == signal.SIGKILL else process.terminate()
        process.join(10)
        if not process.is_alive():
            return


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_record(step: Step, command: str, started: str, seconds: float,
                  **outcome: Any) -> dict[str, Any]:
    """Write a step's record atomically (what it was, when, and its outcome); return it."""
    definition = ([str(spec) for spec in step.target] if step.kind == "extract"
                  else step.target.describe())
    record = {"name": step.name, "kind": step.kind, "key": step.key, "definition": definition,
              "command": command, "started": started, "finished": _now(),
              "seconds": round(seconds, 1), **outcome}
    atomic_write_json(step.record, record)
    return record


def _execute(step: Step, job: steps.Job, log_level: int, command: str) -> dict[str, Any]:
    """Run a step and write its record (done or failed); return the record."""
    started, clock = _now(), time.perf_counter()
    try:
        outcome = {"status": "done", "error": None, **run_in_child(step, job, log_level)}
    except StepFailed as failure:
        logger.error("%s failed: %s", step.name, failure)
        outcome = {"status": "failed", "error": str(failure), "traceback": failure.details}
    return _write_record(step, command, started, time.perf_counter() - clock,
                         scheduler=job.scheduler, **outcome)


def plan(config: BenchmarkConfig, work: Path, context: dict[str, Any]
         ) -> tuple[dict[str, Step], list[Step]]:
    """The extraction step of every extractor and the step of every pipeline.

    An extraction's key holds what decides the features (extractor, size, colour per
    block), so pipelines that differ only in PCA or model share it.
    """
    extractions = {
        name: Step("extract", name, specs,
                   _key([[s.extractor, list(s.size), s.color] for s in specs], context),
                   work / "extract" / f"{name}.json")
        for name, specs in config.extractors.items()}
    pipeline_context = {**context, "predict_sample": config.predict_sample}
    pipelines = [Step(p.kind, p.name, p, _key(p.describe(), pipeline_context),
                      work / "pipelines" / f"{p.name}.json") for p in config.pipelines()]
    return extractions, pipelines


def run_benchmark(config: BenchmarkConfig, *, data: str | os.PathLike,
                  split_path: str | os.PathLike, out: str | os.PathLike,
                  cache_dir: str | os.PathLike, n_jobs: int = 1, fresh: bool = False,
                  only: Sequence[str] = (), progress: bool = True,
                  command: str = "", scheduler: str | None = None) -> dict[str, Any]:
    """Run the pipelines of a configuration that have not finished yet, then report.

    Parameters
    ----------
    config : BenchmarkConfig
        What to compare.
    data : path-like
        UTKFace image folder.
    split_path : path-like
        Shared split manifest; made with ``config.seed`` and saved there if missing.
        With ``config.limit`` the pipelines use a stratified subset of it.
    out : path-like
        Report folder (see the module docstring).
    cache_dir : path-like
        Feature cache folder, shared by the steps.
    n_jobs : int
        Processes for extraction and decoding, threads for fitting.
    fresh : bool
        Run the selected pipelines even if they finished before (extraction times
        measured before are kept: the features are the same).
    only : sequence of str
        Run only the pipelines matching one of these names or shell patterns
        (``hog-*``); the report still shows every pipeline of the configuration.
    progress : bool
        Progress bars and INFO logging in the steps.
    command : str
        The command line, recorded with the results.
    scheduler : str, optional
        Dask scheduler address (resolved: :func:`pipelines.cluster.scheduler_address`):
        the classical pipelines extract their features and train XGBoost on its workers,
        which must read ``data`` at the same path; an SVM fits in the step's process and
        is refused above :data:`pipelines.cluster.SVM_CLUSTER_LIMIT` training rows (that
        pipeline fails, the others run). CNNs ignore it. It is not part of the resumption
        key: see :func:`_key`. None: everything runs on this machine.

    Returns
    -------
    dict
        The content of ``results.json``: ``context`` (command, environment, data,
        split, configuration) and ``rows`` (one per pipeline and task).
    """
    out, cache_dir = Path(out), Path(cache_dir).resolve()
    work = out / WORK
    index = index_folder(data)
    split = load_or_create_split(index, split_path, seed=config.seed)
    parts = split.apply(index)
    used, manifest = split, Path(split_path).resolve()
    if config.limit is not None and config.limit < len(index):
        used, manifest = subset_split(split, parts, config.limit, config.seed), work / "split.json"
        used.save(manifest)
    context = {"data": str(index.folder), "split": used.sha256, "seed": config.seed}
    extractions, pipelines = plan(config, work, context)
    selected = [step for step in pipelines
                if not only or any(fnmatch.fnmatchcase(step.name, p) for p in only)]
    if only and not selected:
        raise ValueError(f"--only {' '.join(only)} matches none of the pipelines: "
                         f"{', '.join(step.name for step in pipelines)}")
    pending = [step for step in selected if fresh or _finished(step) is None]
    logger.info("%d pipeline(s): %d to run, %d finished before", len(pipelines), len(pending),
                len(selected) - len(pending))
    log_level = logging.INFO if progress else logging.WARNING
    if scheduler is not None:
        logger.info("classical pipelines use the Dask scheduler at %s%s", scheduler,
                    "; CNNs ignore it and train on this machine"
                    if any(step.kind == "cnn" for step in pending) else "")

    job = steps.Job(index.folder, manifest, cache_dir, work / "runs", n_jobs, config.seed,
                    config.predict_sample, progress, scheduler)
    try:
        _run_steps(pending, extractions, job, log_level, command)
    finally:     # also when interrupted: report what has finished
        results = _report(config, extractions, pipelines, out, used, manifest, index,
                          command, scheduler)
    return results


def _run_steps(pending: Sequence[Step], extractions: dict[str, Step], job: steps.Job,
               log_level: int, command: str) -> None:
    """Run the pending steps in order, each in its ``job.out / name`` folder; a classical
    pipeline first needs its extractor's extraction (run once, or found finished)."""
    extracted: dict[str, dict[str, Any]] = {}
    for number, step in enumerate(pending, start=1):
        logger.info("[%d/%d] %s", number, len(pending), step.name)
        if step.kind == "classical":
            extractor = step.target.extractor
            if extractor not in extracted:
                extraction = extractions[extractor]
                extracted[extractor] = _finished(extraction) or _execute(
                    extraction, dataclasses.replace(job, out=job.out / f"extract-{extractor}"),
                    log_level, command)
            if extracted[extractor]["status"] != "done":
                _write_record(step, command, _now(), 0.0, status="failed",
                              error=f"feature extraction ({extractor}) failed: "
                                    f"{extracted[extractor]['error']}",
                              scheduler=job.scheduler)
                continue
        _execute(step, dataclasses.replace(job, out=job.out / step.name), log_level, command)


def _shown(path: str | os.PathLike) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _report(config: BenchmarkConfig, extractions: dict[str, Step], pipelines: list[Step],
            out: Path, split: Split, manifest: Path, index: DatasetIndex,
            command: str, scheduler: str | None = None) -> dict[str, Any]:
    records = {}
    for step in pipelines:    # a record of another definition, split or seed is stale
        record = _read_record(step.record)
        records[step.name] = record if record and record.get("key") == step.key else None
    extraction_records = {name: _finished(step) for name, step in extractions.items()}
    commands = sorted({r["command"] for r in records.values() if r and r.get("command")})
    context = {
        "command": command, "commands": commands or [command],
        "written": _now(),
        "environment": {**environment(), "scheduler": scheduler},
        "config": config.source and _shown(config.source),
        "tasks": list(config.tasks), "data": str(index.folder), "faces": len(index),
        "split": {"manifest": _shown(manifest), "sha256": split.sha256, "limit": config.limit,
                  **{part: len(getattr(split, part)) for part in PARTS}},
        "test_faces_sha256": names_sha256(split.test),
        "predict_sample": min(config.predict_sample, len(split.test)),
        "pipelines": [step.target.describe() | {"name": step.name} for step in pipelines],
    }
    rows = table_rows([step.target for step in pipelines], records, extraction_records)
    return write_report(out, rows, context)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m benchmarks.run``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Compare pipelines (feature extractor x model, and CNNs) on one shared "
                    "split of a UTKFace folder: metrics per task, worst-group gaps, "
                    "extraction and fit time, predict throughput and model size, as Markdown, "
                    "CSV, JSON and plots. Rerunning the same command resumes an interrupted "
                    "run.",
        epilog="Example: python -m benchmarks.run --quick (a small subset and short CNN "
               "training, a few minutes; writes into runs/benchmark-quick)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="benchmark configuration, TOML or JSON (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="apply the configuration's [quick] settings: a stratified subset "
                             "of the split and a short CNN training")
    parser.add_argument("--data", type=Path, default=None,
                        help="UTKFace image folder (default: $UTKFACE_DIR or "
                             f"{default_data_dir()})")
    parser.add_argument("--split", type=Path, default=DEFAULT_MANIFEST,
                        help="shared split manifest; made with the configuration's seed and "
                             f"saved there if missing (default: {DEFAULT_MANIFEST})")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"report folder (default: {DEFAULT_OUT}, or {QUICK_OUT} with "
                             "--quick)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="feature cache folder, shared with python -m pipelines.run; "
                             "extraction times read from it are marked as cached "
                             f"(default: {DEFAULT_CACHE})")
    parser.add_argument("--n-jobs", type=int, default=ALL_CORES,
                        help="processes for extraction and image decoding, threads for "
                             "fitting (default: all %(default)s cores)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None, metavar="TASK",
                        help=f"tasks to compare, of {', '.join(TASKS)} (default: the "
                             "configuration's)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use a stratified subset of about this many faces of the split")
    parser.add_argument("--epochs", type=int, default=None,
                        help="CNN epochs (default: the configuration's)")
    parser.add_argument("--only", nargs="+", default=(), metavar="NAME",
                        help="run only these pipelines (names or patterns such as 'hog-*'); "
                             "the report still lists every pipeline of the configuration")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="Dask scheduler address (e.g. tcp://10.0.0.5:8786; default: "
                             f"${SCHEDULER_ENV} when set): the classical pipelines extract "
                             "their features on the cluster's workers and train XGBoost "
                             "there. The image folder must be readable at the same path "
                             "from every worker. An RBF SVM still fits on this machine and "
                             f"is refused above {SVM_CLUSTER_LIMIT:,} training rows (its "
                             "pipeline fails); CNN pipelines ignore it and train on this "
                             "machine. Not part of what decides whether a finished pipeline "
                             "is run again; needs pip install -e \".[distributed]\"")
    parser.add_argument("--fresh", action="store_true",
                        help="rerun the selected pipelines even if they finished before")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a pipeline failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parse_cli_args(parser, argv)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    command = shlex.join(["python", "-m", "benchmarks.run", *argv])
    # SIGTERM as Ctrl-C: stop the running step (its own process group) and report
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        config = load_config(args.config)
        if args.quick:
            config = config.for_quick()
        config = config.with_overrides(tasks=args.tasks, limit=args.limit, epochs=args.epochs)
        results = run_benchmark(config, data=args.data or default_data_dir(),
                                split_path=args.split, out=out, cache_dir=args.cache_dir,
                                n_jobs=args.n_jobs, only=args.only, fresh=args.fresh,
                                progress=not args.quiet, command=command,
                                scheduler=scheduler_address(args.scheduler))
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished pipelines are kept in {out / WORK}: run the same "
              f"command again to resume", file=sys.stderr)
        return 130
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(summary_tables(results["rows"]))
    failed = failed_rows(results["rows"])
    for name, error in failed.items():
        print(f"FAILED {name}: {error}")
    print(f"\nreport: {out / 'RESULTS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
