"""The cache directory: names, manifests, locking, verification, import."""
