"""Shared basics: errors, settings, types, file and hash helpers, OpenPGP."""
