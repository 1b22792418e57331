"""Toy stages for runtime tests (graph descriptions refer to them as toy_stages.<module>)."""
