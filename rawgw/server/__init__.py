"""The client leg: connections, h11 SERVER, limits, timers, flow control."""
