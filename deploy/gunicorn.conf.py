"""gunicorn's settings for the web app: the hooks Prometheus' multiprocess mode needs.

Every other setting stays on the command line (compose.yaml, the systemd unit, the Dockerfile's
CMD): `gunicorn --config deploy/gunicorn.conf.py ... 'digest.web:create_app()'`.

Each gunicorn worker counts in its own memory, so without multiprocess mode a scrape of
/metrics would show whichever worker answered. So this file turns it on for every run: the
workers keep their counts in PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory when the
environment names none) and /metrics sums them. The variable is set here, in the master, before
the app or prometheus_client is imported, so that every forked worker inherits it.

gunicorn reads this module's public names as settings: helpers start with an underscore.
"""

from __future__ import annotations

import os as _os
import shutil as _shutil
import tempfile as _tempfile
from typing import Any

_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_created: str | None = None
if not _os.environ.get(_VARIABLE):
    _created = _os.environ[_VARIABLE] = _tempfile.mkdtemp(prefix="paper-digest-metrics-")


def on_starting(server: Any) -> None:
    """The master, before the first fork: a previous run's counts must not be summed in."""
    from digest import metrics

    metrics.wipe_multiprocess_dir()


def post_fork(server: Any, worker: Any) -> None:
    """A new worker shows its zero counters (it writes only what it touches)."""
    from digest import metrics

    metrics.after_fork()


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended (or was recycled): its live gauges stop counting."""
    from digest import metrics

    metrics.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """The master stops: remove the temporary directory this file made, if it made one."""
    if _created:
        _shutil.rmtree(_created, ignore_errors=True)
