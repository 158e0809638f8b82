"""``python -m brevpipe`` does what ``brevpipe`` does."""

from brevpipe.cli import main

raise SystemExit(main())
