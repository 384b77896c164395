"""The reading room's pages: sign in, jobs, a job's ranked images, one image, models.

Server-rendered (Jinja), so every page works by keyboard and without JavaScript; a small
script of our own (static/ui.js) adds shortcuts, live progress, uploads and the heatmap.
Every action goes through the same core functions as the /v1 endpoint for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlencode, urlsplit

from apiflask import APIBlueprint
from flask import (
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from api.context import api_context
from api.errors import STATUS_OF
from api.ui.sessions import csrf, sign_in, sign_out, signed_in
from core.activation import activate_version
from core.errors import DomainError
from core.jobs import Page, get_job, list_jobs, rejected_page
from core.keys import Principal
from core.labels import LABELS, set_label
from core.models import FINISHED_STATUSES
from core.reading_room import Show, counts, image_detail, neighbours, ranked_page
from core.registry import active_version, get_version, list_versions
from core.training_runs import TrainingParams, list_runs, queue_requested_run

# An APIBlueprint only so APIFlask's spec can skip it: pages are not part of the API.
bp = APIBlueprint(
    "ui",
    __name__,
    enable_openapi=False,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
PER_PAGE = 48
REJECTED_PER_PAGE = 20
View = TypeVar("View", bound=Callable[..., ResponseReturnValue])


@bp.before_request
def _check_csrf() -> None:
    if request.method == "POST":
        csrf.protect()


@bp.after_request
def _no_framing(response: Any) -> Any:
    """The pages are never shown inside another site's frame, and name no other origin."""
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    )
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@bp.errorhandler(CSRFError)
def _csrf_refused(error: CSRFError) -> ResponseReturnValue:
    return render_template(
        "ui/error.html",
        title="Refused",
        message=f"The form did not carry a valid security token ({error.description}). "
        "Reload the page and try again.",
    ), 400


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> ResponseReturnValue:
    """A page's error as a page (the API's own answer JSON)."""
    title = {400: "Not understood", 404: "Not found"}.get(error.code or 500, "Not possible")
    return render_template(
        "ui/error.html", title=title, message=error.description or error.name
    ), error.code or 500


@bp.errorhandler(DomainError)
def _domain_error(error: DomainError) -> ResponseReturnValue:
    status = next((s for cls, s in STATUS_OF.items() if isinstance(error, cls)), 400)
    return render_template("ui/error.html", title="Not possible", message=error.message), status


def page_for(role: str | None = None) -> Callable[[View], View]:
    """A page for signed-in keys (whose scope holds `role`, when given)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            principal = signed_in()
            if principal is None:
                return redirect(url_for("ui.sign_in_page", next=request.full_path.rstrip("?")))
            if role is not None and role not in principal.roles:
                return render_template(
                    "ui/error.html",
                    title="Not allowed",
                    message=f"A {principal.scope} key cannot do this.",
                ), 403
            return view(principal, *args, **kwargs)

        return cast(View, wrapper)

    return decorate


@bp.app_template_filter("merge_query")
def _merge_query(args: dict[str, str], **changes: object) -> str:
    """The page's query string with `changes` made (a pager's link keeps the filter)."""
    return urlencode({**args, **{key: str(value) for key, value in changes.items()}})


@bp.app_context_processor
def _page_globals() -> dict[str, Any]:
    return {"principal": signed_in() if request.blueprint == "ui" else None}


@bp.get("/")
def home() -> ResponseReturnValue:
    return redirect(url_for("ui.jobs_page"))


@bp.get("/sign-in")
def sign_in_page() -> ResponseReturnValue:
    return render_template("ui/sign_in.html", next=_safe_next(request.args.get("next")))


@bp.post("/sign-in")
def sign_in_post() -> ResponseReturnValue:
    target = _safe_next(request.form.get("next"))
    if not sign_in(request.form.get("api_key", "")):
        return render_template(
            "ui/sign_in.html", next=target, error="That key is not valid (or was revoked)."
        ), 401
    return redirect(target)


@bp.post("/sign-out")
def sign_out_post() -> ResponseReturnValue:
    sign_out()
    return redirect(url_for("ui.sign_in_page"))


def _safe_next(target: str | None) -> str:
    """Only a path of the reading room itself: never another site after signing in."""
    default = url_for("ui.jobs_page")
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or "\\" in target:
        return default
    return target


@bp.get("/jobs")
@page_for()
def jobs_page(principal: Principal) -> ResponseReturnValue:
    number = _page_number()
    with api_context(current_app).db.session() as session:
        page = list_jobs(session, number, 25, owner=principal.owner_filter)
        session.expunge_all()
    return render_template(
        "ui/jobs.html",
        page=page,
        pages=_pages(page),
        finished=FINISHED_STATUSES,
        can_submit="submit" in principal.roles,
        max_files=api_context(current_app).settings.max_upload_files,
    )


@bp.get("/jobs/<job_id>")
@page_for()
def job_page(principal: Principal, job_id: str) -> ResponseReturnValue:
    show = _show()
    number = _page_number()
    rejected_number = _page_number("rejected_page")
    with api_context(current_app).db.session() as session:
        job = get_job(session, job_id, principal.owner_filter)
        page = ranked_page(session, job_id, show, number, PER_PAGE, principal.owner_filter)
        tallies = counts(session, job_id)
        rejected = rejected_page(session, job_id, rejected_number, REJECTED_PER_PAGE)
        session.expunge_all()
    return render_template(
        "ui/job.html",
        job=job,
        page=page,
        pages=_pages(page),
        show=show,
        shows=list(Show),
        tallies=tallies,
        rejected=rejected,
        rejected_pages=_pages(rejected),
        finished=FINISHED_STATUSES,
    )


@bp.get("/images/<int(max=9223372036854775807):image_id>")
@page_for()
def image_page(principal: Principal, image_id: int) -> ResponseReturnValue:
    show = _show()
    with api_context(current_app).db.session() as session:
        image = image_detail(session, image_id, principal.owner_filter)
        around = neighbours(session, image.job_id, image_id, show) or neighbours(
            session, image.job_id, image_id, Show.ALL
        )
    return render_template(
        "ui/image.html",
        image=image,
        around=around,
        show=show if around and around.total else Show.ALL,
        labels=LABELS,
        can_review="review" in principal.roles,
    )


@bp.post("/images/<int(max=9223372036854775807):image_id>/label")
@page_for("review")
def label_post(principal: Principal, image_id: int) -> ResponseReturnValue:
    """The same `set_label` as PUT /v1/results/<id>/label, recorded with the key's name."""
    label = request.form.get("label", "")
    with api_context(current_app).db.session() as session:
        set_label(session, image_id, label, principal.name, principal.owner_filter)
    flash(f"Confirmed {label}.")
    return redirect(url_for("ui.image_page", image_id=image_id, show=_show().value))


@bp.get("/models")
@page_for()
def models_page(principal: Principal) -> ResponseReturnValue:
    with api_context(current_app).db.session() as session:
        versions = list_versions(session)
        runs = list_runs(session, 1, 10)
        session.expunge_all()
    return render_template(
        "ui/models.html",
        versions=versions,
        runs=runs.items,
        is_admin=principal.is_admin,
    )


@bp.get("/models/<version>/activate")
@page_for("admin")
def activate_page(principal: Principal, version: str) -> ResponseReturnValue:
    """The confirmation step: what activating (or rolling back to) the version means."""
    with api_context(current_app).db.session() as session:
        chosen = get_version(session, version)
        active = active_version(session)
        session.expunge_all()
    return render_template("ui/activate.html", chosen=chosen, active=active)


@bp.post("/models/<version>/activate")
@page_for("admin")
def activate_post(principal: Principal, version: str) -> ResponseReturnValue:
    context = api_context(current_app)
    row = activate_version(context.db, version, context.queue.release_waiting_jobs)
    flash(f"Version {row.version} is now active.")
    return redirect(url_for("ui.models_page"))


@bp.post("/training-runs")
@page_for("admin")
def training_post(principal: Principal) -> ResponseReturnValue:
    context = api_context(current_app)
    run_id = queue_requested_run(
        context.db,
        TrainingParams.from_settings(context.settings),
        principal.name,
        context.queue.train,
        context.settings.training_stale_after,
    )
    flash(f"Training run {run_id} queued.")
    return redirect(url_for("ui.models_page"))


def _show() -> Show:
    try:
        return Show(request.args.get("show", Show.ALL.value))
    except ValueError:
        abort(400, "show must be one of " + ", ".join(Show))


def _page_number(name: str = "page") -> int:
    value = request.args.get(name, "1")
    if not value.isdigit() or not 1 <= int(value) <= 1_000_000:
        abort(400, f"{name} must be a whole number from 1")
    return int(value)


def _pages(page: Page) -> int:
    return max(1, math.ceil(page.total / page.per_page))
