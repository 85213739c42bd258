"""Every training config, importable from the package (so a config loads from any working
directory). The files under the repository's configs/ are what --config points at; each
imports its counterpart here. Fields and their sources: default.py."""
