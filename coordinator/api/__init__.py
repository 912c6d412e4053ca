"""HTTP blueprints: translate between HTTP and the scheduler."""
