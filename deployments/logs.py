"""Our log lines inside Serve replicas.

Ray Serve configures only its own ``ray.serve`` logger (replica log file with
the replica's context, and stderr); the root logger has no handler there, so
our modules' INFO lines (session start/end, batching, models) would be lost.
Our loggers get Serve's handlers, so they land in the same replica log files.
"""

from __future__ import annotations

import logging

OUR_LOGGERS = ("serve_app", "deployments", "mirage")


def enable_info_logs(level: int = logging.INFO) -> None:
    serve_handlers = logging.getLogger("ray.serve").handlers
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if serve_handlers:
            for handler in serve_handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            logger.propagate = False
