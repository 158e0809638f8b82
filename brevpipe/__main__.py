"""``python -m brevpipe`` does what ``brevpipe`` does."""

from brevpipe.commands.cli import console_main

console_main()
