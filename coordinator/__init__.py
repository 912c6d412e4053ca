"""RenderQ coordinator: holds the queue, leases frames to workers, serves the API."""
