"""/v1/results/<id>/label: a radiologist confirms (or corrects) a result's label."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import current_app

from api.auth import REVIEW, auth, caller
from api.context import api_context
from api.schemas import LabelIn, LabelOut
from core.labels import set_label

bp = APIBlueprint("results", __name__, url_prefix="/v1", tag="Results")


def init_app(app: APIFlask) -> None:
    app.register_blueprint(bp)


@bp.put("/results/<int(max=9223372036854775807):result_id>/label")
@bp.auth_required(auth, roles=REVIEW)
@bp.input(LabelIn, location="json")
@bp.output(LabelOut)
@bp.doc(responses={404: "No such result", 409: "The image was never scored"})
def put_label(result_id: int, json_data: dict[str, Any]) -> dict[str, Any]:
    """Confirm a label (recorded with the key's name); a later label replaces an earlier one.

    Needs a `review` (or `admin`) key: the label feeds the next training run of the model
    everyone's images are scored with.
    """
    with api_context(current_app).db.session() as session:
        who = caller()
        label = set_label(session, result_id, json_data["label"], who.name, who.owner_filter)
        return {
            "result_id": result_id,
            "label": label.label,
            "labelled_by": label.labelled_by,
            "labelled_at": label.labelled_at,
        }
