"""The job and its record: the ``Job`` and its statuses (``job``), the bucket's paths
(``layout``, the only place that builds one), output.json (``output_json``), heartbeats and
signals (``liveness``), stop requests (``control``), reading a job root (``records``) and what
``brevpipe jobs show`` prints (``details``). What ``brevpipe jobs`` and the dashboard read and
write, without running anything; stop and archive, which also mirror to MLflow, are
``brevpipe.integrations.lifecycle``.
"""
