"""Who may do what: the three access tokens (admin, artist, worker), the status page's login session, and its
cross-site checks.

Every API request carries a token as `Authorization: Bearer <token>`. The token decides the role:
- worker: register, heartbeat, claim frames, report them, upload frames, download task inputs, append logs;
- artist: submit tasks, watch them, cancel their own tasks, download frames;
- admin: everything, including switching workers ON/OFF and deleting.
The status page logs in with the admin token once and then rides on a session cookie. A cookie rides along with
requests that other sites make the browser send, so cookie-authenticated changes must also come from our own
origin and carry the session's CSRF token in a header, which another site cannot read or forge.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import hmac
import ipaddress
import os
import posixpath
import secrets
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, g, jsonify, redirect, request, session, url_for

from .config import Config
from .sessions import LoginSessions

ROLES = ("worker", "artist", "admin")
TOKEN_FILES = {"admin": "admin_token", "artist": "artist_token", "worker": "worker_token"}
# Extra artist tokens, one per person ("NAME TOKEN" per line), so an artist can cancel only their own tasks.
ARTIST_TOKENS_FILE = "artist_tokens"
# Seconds between looks at the artist_tokens file for changes.
ARTISTS_RECHECK_SECONDS = 1.0
TOKEN_FILE = TOKEN_FILES["admin"]
SECRET_FILE = "session_secret"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = datetime.timedelta(days=14)
# The identity of everyone when auth is off.
ANONYMOUS_ADMIN = "anonymous"
# A named artist's owner identity is "artist:NAME": the role prefix keeps it apart from the role identities
# ("admin", "artist", "worker", "anonymous"), whatever NAME is.
ARTIST_OWNER_PREFIX = "artist:"
RESERVED_ARTIST_NAMES = ("admin", "artist", "worker", "anonymous")

NEEDS_TOKEN = ("this needs an access token: send it as 'Authorization: Bearer TOKEN', or log in on the status page "
               "(the tokens are in the coordinator's data dir: admin_token, artist_token, worker_token)")


def needs_token(role: str) -> str:
    """The refusal sentence for a request without a token, naming the token the endpoint takes."""
    which = "the admin token" if role == "admin" else f"the {role} token (or the admin token)"
    return (f"this needs {which}: send it as 'Authorization: Bearer TOKEN' (the tokens are in the coordinator's "
            f"data dir, files {role}_token" + ("" if role == "admin" else " and admin_token") + ")")
WRONG_TOKEN = "the token sent is not one of the coordinator's access tokens"
CROSS_SITE = "refused: a change with the login cookie must come from the status page itself"
CROSS_SITE_OPEN = "refused: a change sent by a web page must come from this coordinator's own status page"
# How the coordinators sharing one database agree on a secret: (name, this coordinator's value) -> the farm's value
# (Store.share_secret). A coordinator alone keeps its own.
ShareSecret = Callable[[str, str], str]


def keep_own_secret(name: str, value: str) -> str:
    """The ShareSecret of a coordinator alone on its database: its own value."""
    return value


FOREIGN_HOST = ("refused: this coordinator runs without access tokens, so it answers only when reached by its IP "
                "address, localhost or its --public-url, not by another name (a web page could point that name here)")


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who sent a request: their role and their owner identity, recorded as the owner of the tasks they submit.

    `name` is role-qualified, so no two kinds of sender share it: "admin", "artist" (the shared artist token),
    "artist:NAME" (a named artist's token), "anonymous" (everyone, when auth is off).
    """

    role: str
    name: str

    def has(self, role: str) -> bool:
        """Admins may do everything; other roles only their own things."""
        return self.role == "admin" or self.role == role


@dataclasses.dataclass(frozen=True)
class TokenSource:
    """Where one role's token comes from, so the coordinator can tell the admin where to find it."""

    role: str
    # The file holding it, or None when it was given in the configuration (RENDERQ_<ROLE>_TOKEN).
    path: str | None
    created: bool

    def describe(self) -> str:
        """One sentence for the coordinator's start-up output (never the token itself)."""
        if self.path is None:
            return f"{self.role} token: the one set in RENDERQ_{self.role.upper()}_TOKEN"
        made = "created " if self.created else ""
        return f"{self.role} token: {made}in {self.path} (readable by this user only)"


class TokenBook:
    """The coordinator's tokens and who each one is; looked up in constant time per token."""

    def __init__(self, config: Config, share: ShareSecret = keep_own_secret,
                 shared_artists: Callable[[], list[tuple[str, str]]] = list) -> None:
        self.enabled = config.auth
        self.sources: list[TokenSource] = []
        self._by_role: dict[str, str] = {}
        given = {"admin": config.admin_token, "artist": config.artist_token, "worker": config.worker_token}
        for role in ("admin", "artist", "worker"):
            if given[role]:
                self._by_role[role] = given[role]
                self.sources.append(TokenSource(role, None, False))
            else:
                path = os.path.abspath(os.path.join(config.data_dir, TOKEN_FILES[role]))
                value, created = read_or_create_secret(path, share)
                self._by_role[role] = value
                self.sources.append(TokenSource(role, path, created))
        if len(set(self._by_role.values())) != len(self._by_role):
            raise ValueError("the admin, artist and worker tokens must all differ")
        self._artists_path = os.path.join(config.data_dir, ARTIST_TOKENS_FILE)
        # Named artists kept in a database the coordinators of a cluster share (Store.artist_tokens).
        self._shared_artists = shared_artists
        self._artists_stamp: tuple[int, int] | None = None
        self._artists: list[tuple[str, str]] = []
        self._all_artists: list[tuple[str, str]] = []  # the file's and the database's, as last read
        self._artists_checked = float("-inf")

    @property
    def admin(self) -> str:
        return self._by_role["admin"]

    def token(self, role: str) -> str:
        """The (default) token of a role."""
        return self._by_role[role]

    def identify(self, token: str | None) -> Identity | None:
        """The identity a token stands for, or None. Every known token is compared, so timing reveals nothing."""
        if not token:
            return None
        found: Identity | None = None
        for role, value in self._by_role.items():
            if token_matches(token, value):
                found = Identity(role, "admin" if role == "admin" else role)
        # A token that is none of the three looks at the artists' file now: an artist added (or removed) a moment
        # ago counts at once; the workers' many calls look at it once a second at most.
        for name, value in self._named_artists(fresh=found is None):
            if token_matches(token, value):
                found = Identity("artist", artist_owner(name))
        return found

    def _named_artists(self, fresh: bool = False) -> list[tuple[str, str]]:
        # Re-read when the file changes, so an admin can add an artist without restarting the coordinator; looked
        # at once a second at most, as every request asks (a stat each was 2 % of a busy coordinator's time).
        now = time.monotonic()
        if not fresh and now - self._artists_checked < ARTISTS_RECHECK_SECONDS:
            return self._all_artists
        self._artists_checked = now
        try:
            info = os.stat(self._artists_path)
        except FileNotFoundError:
            self._artists, self._artists_stamp = [], None
        else:
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp != self._artists_stamp:
                self._artists = read_artist_tokens(self._artists_path)
                self._artists_stamp = stamp
        self._all_artists = self._artists + self._shared_artists()
        return self._all_artists

    def describe(self) -> list[str]:
        lines = [source.describe() for source in self.sources]
        if not self.enabled:
            lines = ["AUTH IS OFF: anyone who reaches this coordinator can submit, cancel, read and delete"]
        return lines


def read_artist_tokens(path: str) -> list[tuple[str, str]]:
    """(name, token) pairs of an artist_tokens file: "NAME TOKEN" per line; blank lines and # comments skipped."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, token = line.partition(" ")
            token = token.strip()
            if name and len(token) >= 16:
                pairs.append((name, token))
    return pairs


def artist_owner(name: str) -> str:
    """The owner identity of the tasks a named artist submits."""
    return ARTIST_OWNER_PREFIX + name


def check_artist_name(name: str) -> None:
    """Refuse (ValueError with a sentence) a name that is no valid artist name or that names a role."""
    if not name or not name.isprintable() or " " in name or len(name) > 64:
        raise ValueError("an artist's name must be 1 to 64 printable characters without spaces")
    if ":" in name:
        raise ValueError(f"an artist's name must not contain ':', not {name!r}")
    if name.lower() in RESERVED_ARTIST_NAMES:
        raise ValueError(f"{name!r} is reserved for a role ({', '.join(RESERVED_ARTIST_NAMES)}); "
                         "choose the artist's own name")


def add_artist_token(data_dir: str, name: str) -> str:
    """Create a token for one named artist in the data dir's artist_tokens file (0600); returns the token."""
    check_artist_name(name)
    path = os.path.join(data_dir, ARTIST_TOKENS_FILE)
    if os.path.exists(path) and any(existing == name for existing, _ in read_artist_tokens(path)):
        raise ValueError(f"there is already a token for {name!r} in {path}")
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(f"{name} {token}\n")
    os.chmod(path, 0o600)
    return token


def is_loopback(host: str) -> bool:
    """True when `host` only listens on this machine."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def setup(app: Flask, config: Config, share: ShareSecret = keep_own_secret,
          shared_artists: Callable[[], list[tuple[str, str]]] = list) -> TokenBook:
    """Load (or create) the tokens and the session key, and configure the session cookie. `share` makes them the
    same on every coordinator of one database."""
    book = TokenBook(config, share, shared_artists)
    app.secret_key, _ = read_or_create_secret(os.path.join(config.data_dir, SECRET_FILE), share)
    app.config.update(
        SESSION_COOKIE_NAME="renderq_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.public_url.lower().startswith("https://"),
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.extensions["renderq.tokens"] = book
    if not config.auth:
        app.before_request(_refuse_foreign_host)
    return book


def _refuse_foreign_host() -> Any:
    """Without tokens, answer only requests that reached us by a name no other site can own (see host_is_ours)."""
    return None if host_is_ours() else _refusal(403, FOREIGN_HOST)


def host_is_ours() -> bool:
    """True when the request's Host is an IP address, a localhost name, or the host of --public-url / --host.

    Another site's page can point its own domain name at this machine (DNS rebinding) and so become same-origin
    with us; its requests then carry that name as Host. An IP address or localhost cannot be taken over that way.
    """
    try:
        hostname = (urllib.parse.urlsplit("//" + request.host).hostname or "").lower()
    except ValueError:  # a malformed Host, e.g. an unclosed IPv6 bracket
        return False
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(hostname)
        return True
    except ValueError:
        pass
    config = current_app.config["RENDERQ"]
    named = {urllib.parse.urlsplit(config.public_url).hostname, config.host}
    return hostname in {name.lower() for name in named if name}


def read_or_create_secret(path: str, share: ShareSecret = keep_own_secret) -> tuple[str, bool]:
    """The secret stored in `path`, created (random, mode 0600) when missing; (value, created). When the farm's
    coordinators hold another value for it (`share`), the file is given that one."""
    value, created = _read_or_create_secret_file(path)
    agreed = share(os.path.basename(path), value)
    if agreed != value:
        _write_secret(path, agreed)
    return agreed, created


def _write_secret(path: str, value: str) -> None:
    """Replace the secret in `path` at once (mode 0600): a reader sees the old one or the new one."""
    temporary = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    os.replace(temporary, path)


def _read_or_create_secret_file(path: str) -> tuple[str, bool]:
    try:
        # O_EXCL: two coordinators starting at once cannot both write a different secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)  # a copied data dir may have loosened it; the secret is for the owner only
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
        if not value:
            raise ValueError(f"{path} is empty; delete it and restart the coordinator to create a new one") from None
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


def _book() -> TokenBook:
    return current_app.extensions["renderq.tokens"]


def _fingerprint(token: str) -> str:
    # The session cookie is signed but readable: it holds a keyed hash of the token, never the token. A changed
    # token (new file, new RENDERQ_ADMIN_TOKEN) no longer matches it, which logs every browser out.
    key = current_app.secret_key
    assert isinstance(key, str), "setup() sets the session key from its file"
    return hmac.new(key.encode("utf-8"), token.encode("utf-8"), hashlib.sha256).hexdigest()


def bearer_token() -> str | None:
    """The token of an `Authorization: Bearer` header, or None when the request has none."""
    return parse_bearer(request.headers.get("Authorization", ""))


def parse_bearer(header: str) -> str | None:
    """The token of an `Authorization` header's value when it is `Bearer <token>`, else None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


def _login_sessions() -> LoginSessions:
    return current_app.extensions["renderq.sessions"]


def session_is_admin() -> bool:
    """True when the request carries a login cookie for the current admin token, of a session not ended yet."""
    marker = session.get("admin")
    session_id = session.get("sid")
    if not isinstance(marker, str) or not hmac.compare_digest(marker, _fingerprint(_book().admin)):
        return False
    # The signed cookie alone would stay valid for its whole lifetime, copies included; the server's record ends
    # with logout.
    return isinstance(session_id, str) and _login_sessions().is_live(session_id, time.time())


def identity() -> Identity | None:
    """Who sent the request (from the Bearer token, else the login cookie), or None for a stranger."""
    if not _book().enabled:
        return Identity("admin", ANONYMOUS_ADMIN)
    given = bearer_token()
    if given is not None:
        return _book().identify(given)
    return Identity("admin", "admin") if session_is_admin() else None


def is_admin() -> bool:
    """True for the admin token or a valid login cookie (no cross-site check: use for reading only)."""
    found = identity()
    return found is not None and found.role == "admin"


def log_in(token: str) -> bool:
    """Start an admin session when `token` is the admin token; False (and no session) otherwise."""
    if not token_matches(token.strip(), _book().admin):
        return False
    log_out()  # a session id someone may have planted in this browser before is not carried on
    session.permanent = True
    session["admin"] = _fingerprint(_book().admin)
    session["sid"] = _login_sessions().start(time.time(), SESSION_LIFETIME.total_seconds())
    session["csrf"] = secrets.token_urlsafe(24)
    return True


def log_out() -> None:
    """End the login session on the server too, so no copy of its cookie works any more."""
    session_id = session.get("sid")
    if isinstance(session_id, str):
        _login_sessions().end(session_id)
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


def _is_change() -> bool:
    return request.method not in ("GET", "HEAD", "OPTIONS")


def check_allowed(role: str, open_read: bool = False) -> tuple[int, str] | None:
    """None when the current request may use an endpoint of `role`; else the (status, sentence) to refuse it with.

    `open_read`: a read that the status page makes, allowed to anyone when the coordinator runs with open_status.
    """
    if not _book().enabled:
        # Without tokens the browser needs no cookie to change things, so any page it shows could: only our own
        # page (or a client that is not a browser, which sends no Origin) may.
        if _is_change() and not same_origin():
            return 403, CROSS_SITE_OPEN
        g.renderq_identity = Identity("admin", ANONYMOUS_ADMIN)
        return None
    given = bearer_token()
    if given is not None:
        # Browsers never add an Authorization header on their own, so a Bearer request needs no cross-site check.
        found = _book().identify(given)
        if found is None:
            return 401, WRONG_TOKEN
        if not found.has(role):
            return 403, f"this needs the {role} token (or the admin token); the token sent is the {found.role} token"
        g.renderq_identity = found
        return None
    if session_is_admin():
        if _is_change():
            sent = request.headers.get(CSRF_HEADER) or request.form.get("csrf", "")
            if not same_origin() or not token_matches(sent, csrf_token()):
                return 403, CROSS_SITE
        g.renderq_identity = Identity("admin", "admin")
        return None
    if open_read and not _is_change() and current_app.config["RENDERQ"].open_status:
        g.renderq_identity = None
        return None
    return 401, needs_token(role)


def check_change_allowed() -> tuple[int, str] | None:
    """None when the current request may change anything (the admin token or an admin's page); else a refusal."""
    return check_allowed("admin")


def current_identity() -> Identity | None:
    """The identity an access check let through for this request (None for an open status reader)."""
    return g.get("renderq_identity")


def _refusal(status: int, message: str) -> Any:
    response = jsonify({"error": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="RenderQ"'
    return response


def requires(role: str, open_read: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Refuse the request (401/403, JSON error, nothing read or changed) unless its token has `role` (admins have
    every role)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            refused = check_allowed(role, open_read)
            if refused is not None:
                return _refusal(*refused)
            return view(*args, **kwargs)

        wrapped.renderq_role = role  # type: ignore[attr-defined]  # read by the OpenAPI coverage test
        return wrapped

    return decorate


admin_required = requires("admin")


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
                found = _book().identify(bearer_token())
                if found is None:
                    return _refusal(401, WRONG_TOKEN)
                return _refusal(403, f"the status page needs the admin token; the token sent is the {found.role} "
                                     "token")
            if page:
                return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))
            return _refusal(401, NEEDS_TOKEN)

        return wrapped

    return decorate


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this coordinator only, never another site; "/" for anything else.

    The answer is rebuilt from the parsed path (and query), never passed on as given: browsers drop tabs and
    newlines from a Location and read a backslash as a slash, so "/%09/evil.example" (a tab) would reach another
    site.
    """
    if not target or "\\" in target or any(not c.isprintable() or c.isspace() for c in target):
        return "/"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return "/"
    # normpath keeps a leading "//" (POSIX allows it), which a browser reads as another host: one slash only.
    path = "/" + posixpath.normpath(parts.path).lstrip("/")
    if parts.path.endswith("/") and path != "/":
        path += "/"
    rebuilt = urllib.parse.quote(path, safe=_PATH_SAFE)
    if parts.query:
        rebuilt += "?" + urllib.parse.quote(parts.query, safe=_PATH_SAFE + "?=&")
    return rebuilt


# Characters kept as they are in the rebuilt target: RFC 3986's path characters, and '%' so that escapes stay escapes.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
