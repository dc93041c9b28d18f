"""Command-line front ends: argument parsing and output only, no logic."""
