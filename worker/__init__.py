"""RenderQ worker: renders leased frames with a long-lived Blender session per task."""
