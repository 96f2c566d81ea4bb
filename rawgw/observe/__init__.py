"""Observation: logs written off the event loop, metrics, the dashboard."""
