"""Point trackers: one module per backend, each with a BACKEND class (see base.py)."""
