"""One measurement in this process: the phase table's builders and the backend table."""
