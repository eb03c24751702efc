"""The one exception type a user is meant to read, and the wrapper that turns it into a clean exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

DEBUG_ENV = "PIPELINE_DEBUG"


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, unreachable server); its message says how."""


def run_cli(main: Callable[[], None]) -> None:
    """Run a stage's `main`; a PipelineError prints its message alone and exits 2.

    Tracebacks are for bugs, not for a typo in params.yaml: set PIPELINE_DEBUG=1 to see them anyway.
    """
    try:
        main()
    except PipelineError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
