"""What operators read besides the CLI: the Prometheus exporter of a migration's database-side
figures. Read-only.
"""
