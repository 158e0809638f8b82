"""``python -m brevpipe`` does what ``brevpipe`` does."""

from brevpipe.commands.cli import main

raise SystemExit(main())
