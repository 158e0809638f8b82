"""Job tags: plain labels a user puts on a job (``job.tags=[line3,night-shift]``).

They are in output.json (``job.tags``), on the job's MLflow run and on the model versions it
registers, and ``brevpipe jobs list --tag`` filters by them. A tag is checked like any other
input: it goes into MLflow tag keys and onto HTML pages.
"""

from __future__ import annotations

import re
from typing import Any

from brevpipe.errors import ConfigError

TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_TAGS = 32


def check_tags(value: Any) -> list[str]:
    """The job's tags as a sorted list without repeats; one error naming a bad tag and the fix."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"job.tags={value!r}: give a list, such as job.tags=[line3,night-shift].")
    if len(value) > MAX_TAGS:
        raise ConfigError(f"job.tags has {len(value)} tags: at most {MAX_TAGS}.")
    for tag in value:
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise ConfigError(f"job.tags: {str(tag)[:80]!r} is not a tag: 1 to 64 letters, digits, "
                              "'_', '.' or '-', starting with a letter or digit.")  # fmt: skip
    return sorted(set(value))


def tags_of(output: dict[str, Any]) -> list[str]:
    """The tags an output.json records (an older or a broken one: none)."""
    job = output.get("job")
    tags = job.get("tags") if isinstance(job, dict) else None
    if not isinstance(tags, list):
        return []
    return [t for t in tags if isinstance(t, str) and TAG.fullmatch(t)]
