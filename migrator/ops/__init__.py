"""What operators read besides the CLI: the Prometheus exporter."""
