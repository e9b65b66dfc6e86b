"""Small shared helpers, the lowest layer above :mod:`clipguard.errors` (import the modules directly).

``device`` (torch device choice, the one device default), ``io`` (atomic writes, JSON),
``progress`` (the one progress-bar mechanism), ``roots`` (the folders a user allows images in), ``runrecord`` (``run.json``), ``seeding`` (derived
seeds and generators), ``validate`` (option checks written once).
"""
__all__: list[str] = []
