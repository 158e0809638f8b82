"""Running a pipeline: the DAG of stages (``dag``), the runner that orders, caches and records
them (``runner``), the stage contract (``context``), seeds (``seeding``), checkpoints, a
multi-worker job's roles (``cluster``), TensorFlow's quiet import, and the checks a rerun makes
on a recorded config (``rerun``).
"""
