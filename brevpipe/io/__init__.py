"""Reading and writing: fsspec URLs with time limits and atomic writes (``storage``), the data
cache that jobs share (``cache``), and stage outputs as files (``artifacts``). Below the job:
anything that moves bytes, and nothing that knows what a job is.
"""
