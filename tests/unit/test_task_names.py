"""The enqueue port sends tasks by name: every name it (or beat) sends is a task the workers
register, on the queue its route names."""

from pathlib import Path

from core.broker.routing import TASK_ROUTES, celery_config
from core.config import load_settings
from worker.celery_app import create_celery


def test_every_task_sent_by_name_is_registered_by_the_workers(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    app = create_celery(settings)
    app.loader.import_default_modules()
    beat = {entry["task"] for entry in celery_config(settings)["beat_schedule"].values()}
    assert set(TASK_ROUTES) | beat <= set(app.tasks)
    queues = {queue.name for queue in app.conf.task_queues}
    assert {route["queue"] for route in TASK_ROUTES.values()} <= queues
