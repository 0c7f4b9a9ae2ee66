"""Celery workers over Redis: `celery -A workers worker` and `celery -A workers beat`.

This package imports `digest/` and is never imported by it. Tasks are thin doors over the
library; the schedule lives next to the app in `app.py`.
"""

from .app import app

__all__ = ["app"]
