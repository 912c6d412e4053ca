"""The admins' status page: the farm page, the task pages, what they poll, and the login form."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for

from renderq import __version__
from renderq.capabilities import engine_label
from renderq.model import VIDEO_FRAME, status_label

from .. import auth
from ..errors import NotFound
from . import validation as v

pages = Blueprint("pages", __name__)


def _scheduler():
    return current_app.extensions["renderq.scheduler"]


def _live():
    return current_app.extensions["renderq.live"]


def _page_context() -> dict:
    admin = auth.is_admin()
    return {
        "admin": admin,
        "csrf_token": auth.csrf_token() if admin else "",
        "poll_interval": current_app.config["RENDERQ"].poll_interval,
        "open_status": current_app.config["RENDERQ"].open_status,
        "asset_version": __version__,
    }


def _since() -> int | None:
    return v.query().get("since")


@pages.get("/")
@auth.reader_required(page=True)
def farm_page():
    """The farm: workers and tasks, kept current by polling /status/updates."""
    return render_template("farm.html", **_page_context())


# Ids beyond 2**62 are no task (and no database integer): such a path is simply not found.
@pages.get(f"/tasks/<int(max={2**62}):task_id>")
@auth.reader_required(page=True)
def task_page(task_id: int):
    """One task: frame grid, render times, thumbnails, log and actions; polls /status/task_updates."""
    try:
        task = _scheduler().task_detail(task_id, with_frames=False)
    except NotFound as error:
        return render_template("message.html", heading="No such task", message=error.message,
                               **_page_context()), 404
    return render_template("task.html", task=task, engine_name=engine_label(task["render_engine"]),
                           status_label=status_label, video_frame=VIDEO_FRAME, **_page_context())


@pages.get("/workers/<name>")
@auth.reader_required(page=True)
def worker_page(name: str):
    """One worker: what it offers, its switch and tags, the frame it renders with its log, its latest frames and
    failures; polls GET /worker."""
    try:
        worker = _scheduler().worker_detail(name)
    except NotFound as error:
        return render_template("message.html", heading="No such worker", message=error.message,
                               **_page_context()), 404
    return render_template("worker.html", worker=worker, video_frame=VIDEO_FRAME, **_page_context())


@pages.get("/status/updates")
@auth.reader_required()
def farm_updates():
    """What changed on the farm since version `since` (everything when `since` is missing or too old)."""
    answer = _live().farm.updates(_since())
    answer["time"] = _scheduler().clock()
    return jsonify(answer)


@pages.get("/status/task_updates")
@auth.reader_required()
def task_updates():
    """What changed in one task and one page of its frames (`page`, from 0) since version `since`."""
    fields = v.query()
    task_id, page = fields["task_id"], fields["page"]
    _scheduler().task_detail(task_id, with_frames=False)  # 404 for an unknown task, before a feed is made
    answer = _live().task_feed(task_id, page).updates(_since())
    answer["time"] = _scheduler().clock()
    return jsonify(answer)


@pages.route("/login", methods=["GET", "POST"])
def login():
    """The login form: the admin token, once, sets a session cookie."""
    target = auth.safe_next(request.values.get("next"))
    if request.method == "GET":
        if auth.session_is_admin():
            return redirect(target)
        return render_template("login.html", next=target, error=None, **_page_context())
    if not auth.same_origin():
        return render_template("login.html", next=target, error=auth.CROSS_SITE, **_page_context()), 403
    if not auth.log_in(request.form.get("token", "")):
        error = "That is not the admin token. It is in the coordinator's data dir, file admin_token."
        return render_template("login.html", next=target, error=error, **_page_context()), 401
    return redirect(target)


@pages.post("/logout")
def logout():
    """End the admin session; a cross-site request cannot log anyone out."""
    refused = auth.check_change_allowed()
    if refused is not None and refused[0] == 403:
        return jsonify({"error": refused[1]}), 403
    auth.log_out()
    return redirect(url_for("pages.farm_page") if current_app.config["RENDERQ"].open_status
                    else url_for("pages.login"))
