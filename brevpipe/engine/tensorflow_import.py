"""TensorFlow's first import in a job, without its start-up chatter on the console.

TensorFlow 2.21 prints absl notices while its native libraries load (oneDNN is on; the CPU's
instructions), twice (once per library), before any logging setting applies:
``TF_CPP_MIN_LOG_LEVEL`` does not reach them. So the first import runs with the process's
stderr (file descriptor 2) going to a file; afterwards the known notices are dropped and every
other line is written back to stderr, in order. ``runtime.verbose=debug`` shows everything.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

# Lines TensorFlow prints while loading that tell a user nothing about their job.
NOTICES = (
    "absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "rebuild TensorFlow with the appropriate compiler flags",
)


def import_tensorflow(notices: bool = False) -> None:
    """Import TensorFlow and Keras (once per process); ``notices``: keep TensorFlow's start-up
    notices and INFO logs on the console."""
    if notices or "tensorflow" in sys.modules:
        import keras  # noqa: F401 - imported for the caller
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write("".join(line for line in text.splitlines(keepends=True)
                                     if not any(n in line for n in NOTICES)))  # fmt: skip
            sys.stderr.flush()
    # TensorFlow's Python INFO logs ("Assets written to: ...") are not the job's
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
