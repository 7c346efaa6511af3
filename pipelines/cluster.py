"""Running the classical pipelines on a Dask cluster.

With a scheduler address (``--scheduler`` or the environment variable
``DASK_SCHEDULER_ADDRESS``), :func:`connect` opens a ``dask.distributed.Client`` and
routes joblib's parallel work through ``joblib.parallel_config(backend="dask")``: the
image decoding and feature extraction of :func:`features.extract_features` run as tasks
on the cluster's workers, and XGBoost trains on the workers with ``xgboost.dask``
(:func:`models.xgboost_models.fit_on_cluster`). Without an address nothing changes and
Dask is not imported.

What a cluster needs:

- every worker reads the images by the paths this process gives it, so the image
  folder must be at the same path on this machine (which indexes it) and on every
  worker, e.g. a shared network file system; :func:`check_workers_read` refuses a
  worker that cannot read it, and a file a worker cannot read is reported with the
  worker's address in ``LoadReport.failures``;
- every worker has this package and the same library versions installed.

The feature rows come back to this process, which fits the per-block PCA and, for an
SVM, the model: an SVM's training cost grows with the square of the faces, so it is not
spread over the cluster, and on a cluster an RBF SVM is refused above
:data:`SVM_CLUSTER_LIMIT` training rows (:func:`check_single_machine_model`).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, ContextManager, Iterator, Sequence

import joblib

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

#: Environment variable read when no scheduler address is given (Dask's own name for it).
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
#: Most training rows (faces, twice with ``--flip``) an RBF SVM is fitted on when the
#: run uses a cluster. Its fit time grows roughly with the square of the rows: 15,206
#: faces took 41-88 s per task on one core here, so 50,000 means roughly ten times that,
#: in one process while the cluster idles. Above it, XGBoost trains on the workers.
SVM_CLUSTER_LIMIT = 50_000
#: Models fitted in this process even when the run uses a cluster.
SINGLE_MACHINE_MODELS = ("svm", "linear-svm", "mlp")
_INSTALL_HINT = 'pip install -e ".[distributed]"'


class ClusterError(RuntimeError):
    """The cluster cannot do the work asked: the scheduler cannot be reached, a worker
    cannot read the images, or a model is refused on a cluster; the message says which
    and why."""


def scheduler_address(cli_value: str | None = None) -> str | None:
    """The scheduler address to use: ``cli_value``, else ``$DASK_SCHEDULER_ADDRESS``.

    Parameters
    ----------
    cli_value : str, optional
        Address given on the command line, e.g. ``tcp://10.0.0.5:8786``.

    Returns
    -------
    str or None
        None (run on this machine) when neither is set or both are empty.
    """
    return cli_value or os.environ.get(SCHEDULER_ENV) or None


def _import_distributed():
    try:
        import distributed
    except ImportError as error:
        raise ImportError(f"running on a Dask cluster needs dask[distributed] ({error}); "
                          f"install it with {_INSTALL_HINT}") from error
    return distributed


@contextmanager
def _connected(address: str) -> Iterator[Client]:
    distributed = _import_distributed()
    try:
        client = distributed.Client(address)
    except OSError as error:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {error}") from error
    with client:
        workers = client.scheduler_info().get("workers", {})
        logger.info("connected to the Dask scheduler at %s: %d worker(s), %d thread(s)",
                    address, len(workers), sum(w.get("nthreads", 0) for w in workers.values()))
        with joblib.parallel_config(backend="dask"):
            yield client


def connect(address: str | None) -> ContextManager[Client | None]:
    """Run the joblib-parallel work of the ``with`` block on a Dask cluster.

    Parameters
    ----------
    address : str or None
        Scheduler address (see :func:`scheduler_address`), or None to stay on this
        machine.

    Returns
    -------
    context manager
        Yields None without an address (Dask is not imported). With one, yields a
        connected ``dask.distributed.Client`` and, inside the block, sends every
        joblib ``Parallel`` (feature extraction, :func:`features.io.map_image_chunks`)
        to the cluster's workers; the client is closed on exit.

    Raises
    ------
    ImportError
        With an address but without ``dask[distributed]``; the message names the
        extra to install.
    ClusterError
        If the scheduler cannot be reached (after Dask's connection timeout, 30 s by
        default).
    """
    return nullcontext(None) if address is None else _connected(address)


def on_this_machine() -> ContextManager:
    """Keep the joblib work of the ``with`` block in this process, even inside
    :func:`connect`.

    Outside a cluster the block behaves as before (joblib's threads, and scikit-learn's
    ``n_jobs=None`` stays sequential); inside one it stops scikit-learn from shipping the
    feature matrix to the workers for steps this process does itself (PCA, SVM fits).
    """
    return joblib.parallel_config(backend="threading")


def _unreadable(paths: Sequence[str]) -> list[str]:
    """Runs on a worker: the paths it cannot read."""
    return [path for path in paths if not os.access(path, os.R_OK)]


def check_workers_read(client: Client, paths: Sequence[str | os.PathLike]) -> None:
    """Check that every worker of ``client`` can read ``paths`` (files or folders).

    Raises
    ------
    ClusterError
        Naming each worker and the paths it cannot read, with a reminder that image
        paths must be readable at the same path from every worker.
    """
    paths = [os.fspath(path) for path in paths]
    missing = {worker: found for worker, found in client.run(_unreadable, paths).items() if found}
    if missing:
        raise ClusterError(
            "; ".join(f"worker {worker} cannot read {', '.join(found)}"
                      for worker, found in sorted(missing.items()))
            + ". Image paths must be readable at the same path from every Dask worker "
              "(e.g. a shared file system).")


def check_single_machine_model(model: str, n_rows: int) -> None:
    """Refuse, or log, a model that a cluster does not train.

    SVMs (``svm``, ``linear-svm``) are fitted in this process, not on the workers; the
    RBF SVM, whose cost grows with the square of the rows, is refused above
    :data:`SVM_CLUSTER_LIMIT` rows. Other models pass silently.

    Parameters
    ----------
    model : str
        A name from :data:`models.factory.MODELS`.
    n_rows : int
        Training rows (faces, twice with mirrored training faces).

    Raises
    ------
    ClusterError
        For ``svm`` above the limit; the message suggests ``xgboost``.
    """
    if model not in SINGLE_MACHINE_MODELS:
        return
    if model == "svm" and n_rows > SVM_CLUSTER_LIMIT:
        raise ClusterError(
            f"the RBF SVM is not trained on a cluster: it would fit {n_rows:,} rows in this "
            f"one process (its cost grows with the square of the rows; the limit on a cluster "
            f"is {SVM_CLUSTER_LIMIT:,}). Use --model xgboost, which trains on the Dask "
            f"workers, or run without a scheduler.")
    logger.warning("%s is fitted in this process on %d rows, not on the cluster; only the "
                   "feature extraction uses the workers", model, n_rows)
