"""Talking to the coordinator: the client with the access token, Blender's online-access switch, the connection test.

Nothing here touches `bpy` except `online_access_problem` and `settings_from_prefs`, which the main thread calls
before it starts a job; the rest runs inside jobs.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass

import bpy

from renderq.http_client import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorUnreachable,
    Forbidden,
    NotFound,
    Unauthorized,
)

from . import prefs, state

# Quick answers keep the interface honest: a coordinator that takes longer than this is reported unreachable.
CHECK_TIMEOUT = 5.0
# Uploads of big files must not time out between two blocks.
TRANSFER_TIMEOUT = 60.0


class AuthorizedClient(CoordinatorClient):
    """The coordinator client with the add-on's token, sent as `Authorization: Bearer <token>` when one is set."""

    def __init__(self, base_url: str, token: str = "", timeout: float = 30.0) -> None:
        super().__init__(base_url, timeout=timeout, token=token.strip() or None)


@dataclass(frozen=True)
class Settings:
    """The coordinator address and token, read on the main thread and handed to a job."""

    url: str
    token: str

    def client(self, timeout: float = 30.0) -> AuthorizedClient:
        """A new client; ValueError (a plain sentence) when the URL is not an http(s) address."""
        return AuthorizedClient(self.url, self.token, timeout=timeout)


class Refused(Exception):
    """The action cannot start; the message is the sentence to show the artist."""


def settings_from_prefs(context: bpy.types.Context | None = None) -> Settings:
    """The coordinator settings from the add-on preferences, unchecked (main thread); raises Refused while the
    add-on is not enabled."""
    preferences = prefs.get(context)
    if preferences is None:
        raise Refused("The RenderQ add-on is not enabled")
    return Settings(url=(preferences.coordinator_url or "").strip(), token=preferences.token or "")


def checked_settings(context: bpy.types.Context | None = None) -> Settings:
    """The coordinator settings from the preferences, checked (online access, add-on enabled, URL); raises Refused."""
    problem = online_access_problem()
    if problem:
        raise Refused(problem)
    settings = settings_from_prefs(context)
    problem = check_url(settings.url)
    if problem:
        raise Refused(problem)
    return settings


def check_url(url: str) -> str | None:
    """A sentence when `url` cannot be a coordinator address, else None."""
    if not url:
        return "Set the coordinator URL in the RenderQ add-on preferences (e.g. http://127.0.0.1:5000)"
    try:
        CoordinatorClient(url)
    except ValueError as error:
        return f"The coordinator URL is not usable: {error}"
    return None


def online_access_problem() -> str | None:
    """A sentence when Blender does not allow online access (4.2+), else None. Read each time: the artist may
    change the preference at any moment."""
    if getattr(bpy.app, "online_access", True):
        return None
    if getattr(bpy.app, "online_access_override", False):
        return ("Online access is disabled for this Blender session (started with --offline-mode); "
                "restart Blender without it to use RenderQ")
    return "Online access is disabled: allow it in Preferences > System > Network to use RenderQ"


def addon_version() -> str:
    """This add-on's version, e.g. "0.1.0" (bl_info's, which build_addon.py keeps equal to the project's)."""
    return ".".join(str(part) for part in state.ADDON_VERSION)


def current_user() -> str:
    """The login name recorded as a task's submitter; empty when it cannot be found."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def error_sentence(error: BaseException) -> str:
    """One plain sentence for a failed coordinator call."""
    if isinstance(error, CoordinatorUnreachable):
        return f"Cannot reach the coordinator at {_base_url_of(error)} ({error.reason})"
    if isinstance(error, Unauthorized) and not isinstance(error, Forbidden):
        return (f"The coordinator refused the access token (HTTP {error.status}): "
                "check the token in the RenderQ add-on preferences")
    if isinstance(error, CoordinatorError):
        return _capitalized(error.message)  # a 403 too: another artist's task, or a token of the wrong kind
    if isinstance(error, ValueError):
        return _capitalized(str(error))
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}"
    return f"{type(error).__name__}: {error}"


def _base_url_of(error: CoordinatorUnreachable) -> str:
    match = re.search(r" at (\S+) \(", error.message)
    return match.group(1) if match else "the configured URL"


def _capitalized(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] if text else "Unknown error"


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"^\s*(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def test_connection(settings: Settings) -> str:
    """Ask the coordinator's /health, then a listing that needs the token; return a sentence saying it works.

    Raises ConnectionProblem with a sentence saying why not: unreachable, not a RenderQ coordinator, another
    RenderQ version, token refused. Runs in a job.
    """
    try:
        client = settings.client(timeout=CHECK_TIMEOUT)
    except ValueError as error:
        raise ConnectionProblem(_capitalized(str(error))) from None
    try:
        health = client.health()
    except CoordinatorUnreachable as error:
        raise ConnectionProblem(error_sentence(error)) from None
    except Unauthorized as error:
        raise ConnectionProblem(error_sentence(error)) from None
    except CoordinatorError as error:
        if isinstance(error, NotFound) or 200 <= error.status < 300:
            # No /health page, or one that is not JSON: some other web server.
            raise ConnectionProblem(f"{settings.url} answers, but it is not a RenderQ coordinator") from None
        raise ConnectionProblem(f"The coordinator answered with an error: {error.message}") from None
    if not isinstance(health, dict) or health.get("ok") is not True or not isinstance(health.get("version"), str):
        raise ConnectionProblem(f"{settings.url} answers, but it is not a RenderQ coordinator")
    version = health["version"]
    mine = addon_version()
    theirs, ours = _major_minor(version), _major_minor(mine)
    if theirs is None or ours is None or theirs != ours:
        raise ConnectionProblem(
            f"The coordinator runs RenderQ {version}, but this add-on is for RenderQ {mine}; "
            "install the add-on that matches the farm"
        )
    try:
        workers = client.list_workers()
    except CoordinatorError as error:
        raise ConnectionProblem(error_sentence(error)) from None
    alive = sum(1 for worker in workers if isinstance(worker, dict) and worker.get("alive"))
    return f"Connected to RenderQ {version} at {client.base_url}: {alive} of {len(workers)} worker(s) alive"


class ConnectionProblem(Exception):
    """The connection test failed; the message is the sentence to show."""
