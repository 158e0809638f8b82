"""Configuration: what a job is asked to do, before anything runs.

The typed settings and their defaults (``settings``), the component registry with its kinds and
public names (``components``), the schema made from both (``schema``: ``brevpipe schema``, the
settings reference), and composing the YAML (``compose``). They change together when a kind,
a setting or a config group is added; nothing here touches storage or a job.
"""
