"""Ablation of the training levers: clean and stressed figures of each, at one budget.

    .venv/bin/python bench/ablation.py train writeup --epochs 10
    .venv/bin/python bench/ablation.py train robust+equalize+adamw --epochs 10
    .venv/bin/python bench/ablation.py posthoc robust+equalize+adamw --batch-norm
    .venv/bin/python bench/ablation.py posthoc robust+equalize+adamw --views 6
    .venv/bin/python bench/ablation.py posthoc robust+equalize+adamw --with robust+equalize+adamw@1
    .venv/bin/python bench/ablation.py table [--markdown [VARIANT ...]] [--changes VARIANT ...]

`train NAME` trains a variant through `run_training`, the code path of every training run
(`--activate never`, on a home of its own under var/ablation), so it is measured exactly as a
nightly run would be: stressed selection of the epoch, temperature, threshold, the holdout
and the stressed holdout, each with 95 % intervals. A name joins levers with `+`:

| lever | what it changes |
|---|---|
| `writeup` | the model card's old recipe: standard augmentation, constant SGD, squash |
| `robust` | random resized crops with gamma, contrast and brightness jitter |
| `resolution` | `robust` and a random down-and-up resize of half the images (`robust-resolution`) |
| `zoomout` | `resolution` with a quarter of the crops zoomed out instead (`acquisition`) |
| `equalize`, `trim8` | the preprocessing (histogram equalisation, an 8 % border trim) |
| `sgdcos`, `adamw` | SGD or AdamW with a warm-up and a cosine decay instead of constant SGD |
| `smooth` | label smoothing 0.1 |
| `bn` | BatchNorm statistics recomputed on the training images at the end |
| `size128` | 128x128 input instead of 75x75 |
| `@K` | seed K instead of the first (ensemble members are seeds 0, 1, ...) |

`posthoc NAME` loads the model `train NAME` saved and applies what needs no new training
(BatchNorm recalibration, test-time views, averaging with other variants' models), then
re-fits the temperature and the threshold on validation and measures as training does.
Each result is a JSON file in bench/results/ablation-*.json; `table` prints the newest of each,
`table --markdown` the model card's table (with the stressed figures' 95 % intervals),
`table --changes` each stressed change's AUROC and specificity at the threshold.
ABLATION_HOME moves the bench's home (default var/ablation).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common import REPO, cpu_model, write_results

LEVERS: dict[str, dict[str, Any]] = {
    "writeup": {},
    "robust": {"augment": "robust"},
    "resolution": {"augment": "robust-resolution"},
    "zoomout": {"augment": "acquisition"},
    "equalize": {"preprocessing": "equalize"},
    "trim8": {"preprocessing": "trim8"},
    "sgdcos": {"optimizer": "sgd-cosine"},
    "adamw": {"optimizer": "adamw-cosine"},
    "smooth": {"label_smoothing": 0.1},
    "bn": {"batch_norm_recalibration": True},
    "size128": {"input_size": 128},
}
# The old default recipe (the model card's run 2), which every variant starts from.
WRITEUP = {
    "architecture": "inception_resnet_v2",
    "batch_size": 100,
    "augment": "standard",
    "optimizer": "sgd",
    "label_smoothing": 0.0,
    "preprocessing": "squash",
    "batch_norm_recalibration": False,
    "input_size": 75,
    "ensemble": 1,
    "tta_views": 1,
    "weights": "none",
}


def overrides_of(name: str) -> tuple[dict[str, Any], int]:
    """The TrainingParams of a variant name, and its seed offset."""
    levers, _, seed = name.partition("@")
    params = dict(WRITEUP)
    preprocessing = []
    for lever in levers.split("+"):
        if lever not in LEVERS:
            raise SystemExit(f"unknown lever {lever!r}; choose from {', '.join(LEVERS)}")
        change = LEVERS[lever]
        if "preprocessing" in change:
            preprocessing.append(change["preprocessing"])
        params.update({k: v for k, v in change.items() if k != "preprocessing"})
    if preprocessing:
        params["preprocessing"] = "+".join(sorted(preprocessing, key=lambda p: p != "trim8"))
    return params, int(seed or 0)


HOME = REPO / "var" / "ablation"


def environment(data: Path) -> tuple[Any, Any, Any]:
    from core.config import load_settings
    from core.db import Database
    from core.migrate import upgrade
    from core.storage import Storage

    home = Path(os.environ.get("ABLATION_HOME", HOME))
    settings = load_settings(home=home, data_dir=data, keep_inactive_models=1000)
    upgrade(settings.database_url)
    return settings, Database(settings.database_url), Storage(settings.storage_dir)


def train(name: str, data: Path, epochs: int, architecture: str) -> dict[str, Any]:
    import training.train as training
    from core.models import ModelVersion
    from core.training_runs import DEFAULT_SEED, TrainingParams, request_run

    settings, db, storage = environment(data)
    overrides, seed = overrides_of(name)
    params = TrainingParams.from_settings(
        settings,
        data_dir=str(data),
        epochs=epochs,
        activate="never",
        seed=DEFAULT_SEED + seed,
        **{**overrides, "architecture": architecture},
    )
    with db.session() as session:
        run, _ = request_run(session, params, "cli")
        run_id = run.id
    started = time.monotonic()
    outcome = training.run_training(db, storage, settings, run_id)
    if outcome.error:
        raise SystemExit(f"training failed: {outcome.error}")
    with db.session() as session:
        row = session.query(ModelVersion).filter_by(version=outcome.version).one()
        metrics = row.metrics
    return figures(name, metrics, outcome.version, time.monotonic() - started)


def posthoc(
    name: str, data: Path, others: list[str], batch_norm: bool, views: int
) -> dict[str, Any]:
    """A trained variant's model, changed after training, measured as training measures."""
    from core.training_runs import TrainingParams
    from training.batchnorm import recalibrate_batch_norm
    from training.datasets import gather_datasets, load_splits
    from training.evaluate import load_version
    from training.model import averaged
    from training.train import calibrate, measure

    settings, db, storage = environment(data)
    found = [newest_version(db, variant) for variant in [name, *others]]
    rows = [row for row, _ in found]
    params = TrainingParams(**{**found[0][1], "data_dir": str(data)})
    splits = load_splits(gather_datasets(db, storage, settings, data), params, settings)
    started = time.monotonic()
    networks = [load_version(storage, row) for row in rows]
    if batch_norm:
        for network in networks:
            recalibrate_batch_norm(network, splits.train.x, params.batch_size)
    network = averaged(networks, views) if len(networks) > 1 or views > 1 else networks[0]
    calibration = calibrate(network, splits.validation)
    _, metrics = measure(network, splits, settings.min_sensitivity)
    metrics.update(calibration=calibration, params={**asdict(params), "data_dir": None})
    label = "+".join([name, *(f"with:{o}" for o in others)])
    label += ("+bn(posthoc)" if batch_norm else "") + (f"+views{views}" if views > 1 else "")
    return figures(label, metrics, None, time.monotonic() - started)


def newest_version(db: Any, variant: str) -> tuple[Any, dict[str, Any]]:
    """The newest version trained for `variant` (as `train` names it), with its run's params."""
    from sqlalchemy import select

    from core.models import ModelVersion, TrainingRun
    from core.training_runs import DEFAULT_SEED

    overrides, seed = overrides_of(variant)
    overrides.pop("architecture")  # `train --architecture` may have changed it
    wanted = {**overrides, "seed": DEFAULT_SEED + seed}
    with db.session() as session:
        rows = session.execute(
            select(ModelVersion, TrainingRun.params)
            .join(TrainingRun, ModelVersion.training_run_id == TrainingRun.id)
            .order_by(ModelVersion.id.desc())
        )
        for row, params in rows:
            if all(params.get(key) == value for key, value in wanted.items()):
                session.expunge(row)
                return row, params
    raise SystemExit(f"no trained version of {variant}: run `train {variant}` first")


def figures(name: str, metrics: dict[str, Any], version: str | None, seconds: float) -> dict:
    """The figures the table shows, with their intervals."""
    val, vs = metrics["validation"], metrics["validation_stressed"]
    hold, hs = metrics["holdout"], metrics["holdout_stressed"]
    return {
        "name": name,
        "version": version,
        "machine": f"{os.cpu_count()} CPUs, {cpu_model()}",
        "seconds": round(seconds),
        "params": metrics.get("params"),
        "selection": metrics.get("selection"),
        "calibration": metrics.get("calibration"),
        "threshold": val["threshold"],
        "validation": _clean(val),
        "validation_stressed": _stressed(vs),
        "holdout": _clean(hold),
        "holdout_stressed": _stressed(hs),
    }


def _clean(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("auroc", "accuracy", "sensitivity", "specificity", "specificity_at_sensitivity")
    return {
        **{key: m[key] for key in keys},
        "ece": m["calibration"]["ece"],
        "intervals": m["intervals"],
    }


def _stressed(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("mean_auroc", "worst_auroc", "worst_auroc_change", "specificity")
    keys += ("worst_specificity", "worst_specificity_change", "sensitivity")
    at_sensitivity = [c["specificity_at_sensitivity"] or 0.0 for c in m["changes"].values()]
    return {
        **{key: m[key] for key in keys},
        "mean_specificity_at_sensitivity": sum(at_sensitivity) / len(at_sensitivity),
        "intervals": m["intervals"],
        "changes": m["changes"],
    }


def newest_results() -> dict[str, dict[str, Any]]:
    """The newest result of each variant in bench/results/."""
    newest: dict[str, dict[str, Any]] = {}
    for path in sorted((REPO / "bench" / "results").glob("ablation-*.json")):
        result = json.loads(path.read_text())
        newest[result["name"]] = result
    return newest


def table() -> None:
    header = (
        f"{'variant':<44} {'val AUROC':>9} {'str AUROC':>9} {'worst':>6} "
        f"{'str spec':>8} {'spec@.95':>8} {'hold AUROC':>10} {'hold spec':>9} {'ECE':>5} {'min':>5}"
    )
    print(header)
    for name, r in newest_results().items():
        v, vs, h = r["validation"], r["validation_stressed"], r["holdout"]
        print(
            f"{name:<44} {v['auroc']:>9.4f} {vs['mean_auroc']:>9.4f} {vs['worst_auroc']:>6.3f} "
            f"{vs['specificity']:>8.3f} {vs['mean_specificity_at_sensitivity']:>8.3f} "
            f"{h['auroc']:>10.4f} {h['specificity']:>9.3f} {v['ece']:>5.3f} "
            f"{r['seconds'] / 60:>5.0f}"
        )
    print(
        "val/hold: clean validation and holdout; str: stressed validation (mean over changes); "
        "spec: specificity at the version's threshold; spec@.95: specificity at 0.95 "
        "sensitivity chosen on each stressed set; min: minutes of the run"
    )


def markdown(names: list[str]) -> str:
    """The model card's ablation table: the variants named (all, in file order, if none),
    with the 95 % intervals of the stressed figures."""
    results = newest_results()
    missing = [name for name in names if name not in results]
    if missing:
        raise SystemExit(f"no results for {', '.join(missing)}")
    lines = [
        "| variant | val AUROC | stressed mean AUROC | stressed worst AUROC | "
        "stressed spec. at threshold | worst spec. (change) | holdout AUROC | val ECE | min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names or list(results):
        r = results[name]
        v, vs, h = r["validation"], r["validation_stressed"], r["holdout"]
        lines.append(
            f"| `{name}` | {v['auroc']:.4f} | {_with_interval(vs, 'mean_auroc', 4)} | "
            f"{vs['worst_auroc']:.3f} ({vs['worst_auroc_change']}) | "
            f"{_with_interval(vs, 'specificity', 3)} | "
            f"{vs['worst_specificity']:.3f} ({vs['worst_specificity_change']}) | "
            f"{h['auroc']:.4f} | {v['ece']:.3f} | {r['seconds'] / 60:.0f} |"
        )
    return "\n".join(lines)


def changes_markdown(names: list[str]) -> str:
    """Each stressed change's AUROC and specificity at the threshold, per variant; a change
    of a kind the variant's augmentation applies (at other magnitudes) is marked *."""
    from training.stress import CHANGES, seen_kinds

    results = newest_results()
    missing = [name for name in names if name not in results]
    if missing:
        raise SystemExit(f"no results for {', '.join(missing)}")
    lines = [
        "| change | " + " | ".join(f"`{name}`" for name in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for change in CHANGES:
        cells = []
        for name in names:
            r = results[name]
            figures = r["validation_stressed"]["changes"][change]
            seen = change in seen_kinds((r.get("params") or {}).get("augment", ""))
            cells.append(
                f"{figures['auroc']:.3f} / {figures['specificity']:.2f}" + (" *" if seen else "")
            )
        lines.append(f"| {change} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _with_interval(figures: dict[str, Any], key: str, digits: int) -> str:
    low, high = figures["intervals"][key]
    return f"{figures[key]:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train_cmd = sub.add_parser("train")
    train_cmd.add_argument("name")
    train_cmd.add_argument("--epochs", type=int, default=10)
    train_cmd.add_argument(
        "--architecture", default="inception_resnet_v2", help="baseline_cnn to try the bench fast"
    )
    post = sub.add_parser("posthoc")
    post.add_argument("name")
    post.add_argument("--with", dest="others", action="append", default=[])
    post.add_argument("--batch-norm", action="store_true")
    post.add_argument("--views", type=int, default=1)
    table_cmd = sub.add_parser("table")
    table_cmd.add_argument(
        "--markdown", nargs="*", metavar="VARIANT", help="the model card's table of these variants"
    )
    table_cmd.add_argument(
        "--changes", nargs="+", metavar="VARIANT", help="per change, AUROC / specificity"
    )
    for command in (train_cmd, post):
        command.add_argument(
            "--data",
            type=Path,
            default=Path(os.environ.get("PNEUMOSCAN_TEST_DATA", REPO.parent / "shared" / "data"))
            / "kermany224",
        )
    args = parser.parse_args()
    if args.command == "table":
        if args.changes:
            print(changes_markdown(args.changes))
        elif args.markdown is not None:
            print(markdown(args.markdown))
        else:
            table()
        return
    if args.command == "train":
        result = train(args.name, args.data.resolve(), args.epochs, args.architecture)
    else:
        result = posthoc(args.name, args.data.resolve(), args.others, args.batch_norm, args.views)
    write_results(f"ablation-{_file_name(result['name'])}", result)
    table()


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)[:80]


if __name__ == "__main__":
    main()
