"""Endpoints the gateway answers itself. Each returns a ``Reply`` value; the
dispatcher adds the per-request headers and writes it."""
