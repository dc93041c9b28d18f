"""Building a cache: pipeline, build VE, backends, package cache, finalize."""
