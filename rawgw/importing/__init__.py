"""``rawgw import``: the configs of the gateways rawgw replaces, read into one gateway.toml.

``run`` detects each input's format and writes the result; one module per family of
inputs (``json_formats``, ``dotenv``, ``yaml_proxy``) merges into the shared
``merge.Merge``; ``presets`` holds the provider names and model tables they refer to.
"""
