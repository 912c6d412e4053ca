"""Files for the owner's eyes only: the coordinator's data dir and the worker's work dir hold the studio's .blend
files, frames, logs and tokens, which other users of the same machine must not read."""

from __future__ import annotations

import logging
import os
import stat

__all__ = ["PRIVATE_FILE", "PRIVATE_FOLDER", "PRIVATE_UMASK", "make_private", "make_private_tree_top"]

log = logging.getLogger("renderq.private_files")

# Files created 0600 and folders 0700 whatever the umask the process was started with.
PRIVATE_UMASK = 0o077
PRIVATE_FOLDER = 0o700
PRIVATE_FILE = 0o600


def make_private(path: str, mode: int) -> bool:
    """Give `path` `mode` unless it has it already; a symbolic link is left alone (its target may be anyone's).

    Returns False, with a warning logged, when the mode cannot be changed (another user's folder): the caller goes
    on, since refusing to start would not make the folder any more private.
    """
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) == mode:
            return True
        os.chmod(path, mode)
        return True
    except FileNotFoundError:
        return True
    except OSError as error:
        log.warning("could not make %s private (mode %o): %s; other users of this machine may read it",
                    path, mode, error.strerror or error)
        return False


def make_private_tree_top(folder: str) -> None:
    """Make a folder 0700 and what is directly in it private: files 0600, folders 0700.

    Cheap on any size of tree: only the top level is listed. Deeper files stay as they are, which is enough once
    every folder above them is private (each caller tightens its own deeper folders). The folder itself may be a
    link the owner made (to a larger disk): its target is made private.
    """
    make_private(os.path.realpath(folder), PRIVATE_FOLDER)
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                make_private(entry.path, PRIVATE_FOLDER)
            elif entry.is_file(follow_symlinks=False):
                make_private(entry.path, PRIVATE_FILE)
