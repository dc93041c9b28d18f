"""vzpkg: OpenVZ-style OS template caches and runtime, rebuilt for today's Linux."""

__version__ = "0.1.0"
