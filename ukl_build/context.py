"""What every stage of one build works with, passed as one value."""

from __future__ import annotations

from dataclasses import dataclass

from ukl_build.cache import Cache
from ukl_build.progress import Reporter


@dataclass(frozen=True)
class BuildContext:
    """The means of one build: the cache (a view that holds what it hands out until the
    build ends), the reporter (the build log and live progress; every program runs
    through it) and the environment programs run in (reproducible: SOURCE_DATE_EPOCH,
    locale, the compiler cache's settings)."""

    cache: Cache
    reporter: Reporter
    env: dict[str, str]
