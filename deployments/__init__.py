"""Ray Serve deployments, one per model stage: thin shells (batching, reconfigure,
health checks, metrics) over the ``mirage`` library."""
