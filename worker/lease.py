"""A frame this worker holds (a lease): the model's record, read from the coordinator's answer to a claim."""

from __future__ import annotations

from renderq.model import Lease

__all__ = ["Lease"]
