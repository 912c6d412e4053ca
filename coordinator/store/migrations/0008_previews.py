"""A frame's preview: a small PNG the worker's Blender saves beside a frame whose format a browser cannot show
(EXR, HDR, TIFF, 16-bit PNG...), stored content-addressed like the frame itself (NULL: the frame has none)."""

from yoyo import step

from coordinator.store.schema import add_missing_columns

__depends__ = {"0006_farm_secrets"}


def add_preview_column(db) -> None:
    """Add frames.preview_sha256 where it is missing."""
    add_missing_columns(db, {"frames": {"preview_sha256": "TEXT"}})


steps = [step(add_preview_column)]
