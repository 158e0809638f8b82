"""``brevpipe ui``: the local web dashboard over job roots (watch, compare, debug, launch).

The job buckets are the truth: pages read them through :mod:`brevpipe.jobs` (an in-process
index caches listings) and act through the same code as the command line (stop and archive,
``brevpipe run``, the model's predictor). Everything shown comes from buckets that others may
write, so it is rendered as text by Jinja2's autoescaping, never as markup.
"""
