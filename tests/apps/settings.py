"""How the test apps take their settings: the ``SSE_*`` environment variables
that the test starting them sets (``tests/conftest.py`` drops the caller's own
before any test runs). The switches of the test run itself are not settings."""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Read by the fixtures (``=1``: a missing part fails instead of skipping),
#: never passed to an app.
RUNNER_SWITCHES = frozenset(
    {"SSE_REQUIRE_REDIS", "SSE_REQUIRE_BROWSER", "SSE_REQUIRE_NETNS", "SSE_UPDATE_SCREENSHOT"}
)


def sse_settings(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The ``SSE_*`` settings in ``environ``, without the runner switches."""
    return {
        key: value
        for key, value in environ.items()
        if key.startswith("SSE_") and key not in RUNNER_SWITCHES
    }
