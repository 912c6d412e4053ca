"""Who may change the farm: the admin token, the status page's login session and its cross-site checks.

Changes need the admin token, sent either as `Authorization: Bearer <token>` (command line, scripts) or through
the session cookie the login form sets (the status page). A cookie rides along with requests that other sites
make the browser send, so cookie-authenticated changes must also come from our own origin and carry the
session's CSRF token in a header, which another site cannot read or forge.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import hmac
import os
import secrets
import urllib.parse
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, jsonify, redirect, request, session, url_for

from .config import Config

TOKEN_FILE = "admin_token"
SECRET_FILE = "session_secret"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = datetime.timedelta(days=14)

NEEDS_TOKEN = ("this needs the admin token: send it as 'Authorization: Bearer TOKEN', or log in on the status page "
               "(the token is in the coordinator's data dir, file admin_token)")
WRONG_TOKEN = "the admin token sent is not the coordinator's admin token"
CROSS_SITE = "refused: a change with the login cookie must come from the status page itself"


@dataclasses.dataclass(frozen=True)
class AdminToken:
    """The admin token and where it comes from, so the coordinator can tell the admin where to find it."""

    value: str
    # The file holding it, or None when it was given in the configuration (RENDERQ_ADMIN_TOKEN).
    path: str | None
    created: bool

    def describe(self) -> str:
        """One sentence for the coordinator's start-up output (never the token itself)."""
        if self.path is None:
            return "admin token: the one set in RENDERQ_ADMIN_TOKEN"
        made = "created " if self.created else ""
        return f"admin token: {made}in {self.path} (readable by this user only)"


def setup(app: Flask, config: Config) -> AdminToken:
    """Load (or create) the admin token and the session key, and configure the session cookie."""
    if config.admin_token:
        token = AdminToken(config.admin_token, None, False)
    else:
        path = os.path.abspath(os.path.join(config.data_dir, TOKEN_FILE))
        value, created = _read_or_create_secret(path)
        token = AdminToken(value, path, created)
    app.secret_key, _ = _read_or_create_secret(os.path.join(config.data_dir, SECRET_FILE))
    app.config.update(
        SESSION_COOKIE_NAME="renderq_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.public_url.lower().startswith("https://"),
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.extensions["renderq.admin_token"] = token
    return token


def _read_or_create_secret(path: str) -> tuple[str, bool]:
    """The secret stored in `path`, created (random, mode 0600) when missing; (value, created)."""
    try:
        # O_EXCL: two coordinators starting at once cannot both write a different secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)  # a copied data dir may have loosened it; the secret is for the owner only
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
        if not value:
            raise ValueError(f"{path} is empty; delete it and restart the coordinator to create a new one")
        return value, False
    # Hex: nothing for a shell to interpret, and never a leading '-' that a command line would take for an option.
    value = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value, True


def token_matches(given: str | None, expected: str) -> bool:
    """Compare in constant time, so response timing does not reveal how much of a guess was right."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _token() -> AdminToken:
    return current_app.extensions["renderq.admin_token"]


def _fingerprint(token: str) -> str:
    # The session cookie is signed but readable: it holds a keyed hash of the token, never the token. A changed
    # token (new file, new RENDERQ_ADMIN_TOKEN) no longer matches it, which logs every browser out.
    return hmac.new(current_app.secret_key.encode("utf-8"), token.encode("utf-8"), hashlib.sha256).hexdigest()


def bearer_token() -> str | None:
    """The token of an `Authorization: Bearer` header, or None when the request has none."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


def session_is_admin() -> bool:
    """True when the request carries a login cookie for the current admin token."""
    marker = session.get("admin")
    return isinstance(marker, str) and hmac.compare_digest(marker, _fingerprint(_token().value))


def is_admin() -> bool:
    """True for a valid Bearer token or a valid login cookie (no cross-site check: use for reading only)."""
    given = bearer_token()
    if given is not None:
        return token_matches(given, _token().value)
    return session_is_admin()


def log_in(token: str) -> bool:
    """Start an admin session when `token` is right; False (and no session) otherwise."""
    if not token_matches(token.strip(), _token().value):
        return False
    session.clear()
    session.permanent = True
    session["admin"] = _fingerprint(_token().value)
    session["csrf"] = secrets.token_urlsafe(24)
    return True


def log_out() -> None:
    session.clear()


def csrf_token() -> str:
    """The session's CSRF token, for the page to send back in the X-CSRF-Token header ('' when logged out)."""
    value = session.get("csrf")
    return value if isinstance(value, str) else ""


def same_origin() -> bool:
    """False when the browser says the request comes from another site (Origin, else Referer).

    A request without either header is not from a page another site controls (browsers send Origin on every
    cross-site POST), so it passes this check; the CSRF token still has to match.
    """
    ours = {_origin(request.host_url)}
    public_url = current_app.config["RENDERQ"].public_url
    if public_url:
        ours.add(_origin(public_url))
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin != "null" and _origin(origin) in ours  # "null": a sandboxed frame or a file:// page
    referer = request.headers.get("Referer")
    return not referer or _origin(referer) in ours


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def check_change_allowed() -> tuple[int, str] | None:
    """None when the current request may change the farm; else the (status, sentence) to refuse it with."""
    given = bearer_token()
    if given is not None:
        # Browsers never add an Authorization header on their own, so a Bearer request needs no cross-site check.
        return None if token_matches(given, _token().value) else (401, WRONG_TOKEN)
    if not session_is_admin():
        return 401, NEEDS_TOKEN
    sent = request.headers.get(CSRF_HEADER) or request.form.get("csrf", "")
    if not same_origin() or not token_matches(sent, csrf_token()):
        return 403, CROSS_SITE
    return None


def _refusal(status: int, message: str) -> Any:
    response = jsonify({"error": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="RenderQ"'
    return response


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Refuse the request (401/403, JSON error, nothing changed) unless it carries the admin token."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        refused = check_change_allowed()
        if refused is not None:
            return _refusal(*refused)
        return view(*args, **kwargs)

    return wrapped


def may_read_status() -> bool:
    """The status page and its JSON: admins, or anyone when the coordinator runs with open_status."""
    return current_app.config["RENDERQ"].open_status or is_admin()


def reader_required(page: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Refuse reading the status (a page redirects to the login form, JSON gets a 401) to non-admins, unless the
    status is open."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if may_read_status():
                return view(*args, **kwargs)
            if bearer_token() is not None:
                return _refusal(401, WRONG_TOKEN)
            if page:
                return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))
            return _refusal(401, NEEDS_TOKEN)

        return wrapped

    return decorate


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this coordinator only, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
