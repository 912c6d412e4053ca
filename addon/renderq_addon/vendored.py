"""Makes the modules bundled in `vendor/` importable: RenderQ's client modules and blender_asset_tracer.

`build_addon.py` copies `renderq/http_client.py`, `renderq/packing.py`, `renderq/blend_header.py`,
`renderq/paths.py`, `renderq/frame_download.py`, `renderq/model.py`, `renderq/units.py`,
`renderq/submit.py`, `renderq/tiles.py` and the
`blender_asset_tracer` package into `vendor/` inside the zip. They use absolute imports (`renderq.…`,
`blender_asset_tracer.…`), so their folder has to be on `sys.path` while they are imported. It is put there only
for the duration of the import and removed again: once a package is in `sys.modules`, its submodules are found
through the package's own `__path__`, so Blender's `sys.path` stays as it was for every other add-on.

When the same packages are already importable (a development environment with RenderQ installed), those are used.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

VENDOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor")
# Importing these pulls in everything the add-on uses; BAT's `shaman` (needs `requests`), `s3` and `cli` are not
# bundled and nothing here imports them.
_MODULES = ("renderq.http_client", "renderq.blend_header", "renderq.packing", "renderq.paths",
            "renderq.frame_download", "renderq.model", "renderq.units", "renderq.submit", "renderq.tiles")


def load() -> None:
    """Import the bundled modules; ImportError with a plain sentence when the add-on was installed incomplete."""
    had_mp_main = "__mp_main__" in sys.modules
    inserted = False
    if os.path.isdir(VENDOR_DIR) and VENDOR_DIR not in sys.path:
        sys.path.insert(0, VENDOR_DIR)
        inserted = True
    try:
        for name in _MODULES:
            importlib.import_module(name)
    except ImportError as error:
        raise ImportError(
            f"the RenderQ add-on cannot load its bundled module {error.name or ''} ({error}); "
            "install the zip made by build_addon.py, not the source folder"
        ) from error
    finally:
        if inserted:
            sys.path.remove(VENDOR_DIR)
        if not had_mp_main:
            # BAT imports multiprocessing, whose import aliases the current `__main__` as `__mp_main__`. When the
            # add-on is enabled from a script (`blender --python`), that `__main__` is the script's namespace,
            # which Blender frees when the script ends; Blender 3.4 then crashes at exit while it walks
            # sys.modules to disable add-ons. The alias only matters inside spawned child processes.
            sys.modules.pop("__mp_main__", None)
    # BAT logs every missing file as a warning; the add-on lists missing assets itself, once.
    logging.getLogger("blender_asset_tracer").addHandler(logging.NullHandler())


def origin(module_name: str) -> str:
    """Where a loaded module came from (for diagnostics): its file, or '' when it is not loaded."""
    module = sys.modules.get(module_name)
    return getattr(module, "__file__", "") or ""
