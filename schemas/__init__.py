"""Data contracts of tagcap. This package imports nothing else of tagcap.

Every record that crosses a process boundary (Ray object store, files under OUT/) has its
shape defined here exactly once.
"""

SCHEMA_VERSION = 1
"""Version of the on-disk formats (sample JSON, index/error tables, stats, manifest)."""
