"""rawgw: a strict HTTP/1.1 gateway for LLM APIs, h11 on both legs."""

__version__ = "0.1.0"
