"""Typed settings read once from PNEUMOSCAN_* environment variables and handed down."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core.config_delivery import DeliverySettings
from core.config_training import TrainingSettings

# What PNEUMOSCAN_DEVICE=gpu changes, unless the setting is given (unmeasured: no GPU here).
GPU_DEFAULTS: dict[str, object] = {
    "batch_size": 256,
    "decode_threads": 8,
    "tf_intra_op_threads": 0,
    "tf_inter_op_threads": 0,
    "worker_pool": "solo",
    "worker_concurrency": 1,
}
BROKER_SCHEMES = ("filesystem", "redis", "rediss", "amqp", "sqla+sqlite", "sqla+postgresql")


class Settings(TrainingSettings, DeliverySettings):
    """Everything a pneumoscan process can be told; embedded defaults live under `home`."""

    model_config = SettingsConfigDict(env_prefix="PNEUMOSCAN_", extra="ignore")

    home: Path = Field(Path("var"), description="Root of the embedded defaults.")
    database_url: str = Field("", description="SQLAlchemy URL; default SQLite under home.")
    broker_url: str = Field("", description="Celery broker; default filesystem:// under home.")
    broker_prefix: str = Field("", description="Key prefix on a shared Redis broker.")
    broker_visibility_timeout: int = Field(
        43_200, ge=60, description="Seconds before Redis redelivers an unacknowledged task."
    )
    storage_dir: Path = Field(
        Path(), description="Uploads and model artifacts; default home/storage."
    )
    import_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Server folders that JSON {'folder': ...} jobs may name; an entry "
        "PATH=name+name is open only to keys of those names (and admins).",
    )
    # Derived, never read from the environment: `import_roots` entries that name key names,
    # root -> the names allowed.
    import_root_owners: dict[Path, frozenset[str]] = Field(default_factory=dict, exclude=True)
    max_upload_mb: int = Field(2048, ge=1, description="Largest accepted request body.")
    max_upload_files: int = Field(
        100,
        ge=1,
        description="Files one multipart request may carry (each holds an open file while "
        "the request lasts); more go in a zip.",
    )
    upload_idle_seconds: int = Field(
        60,
        ge=1,
        description="A request whose client sends nothing for this long fails (an upload's "
        "job and files go with it).",
    )
    upload_min_kb_per_s: int = Field(
        16,
        ge=0,
        description="Slowest rate an upload may keep up: each MiB of a body must come within "
        "1024/N seconds of the one before, or the request fails (0: no minimum).",
    )
    max_uploads_per_owner: int = Field(
        4,
        ge=1,
        description="Uploads one key name may have arriving at once, across the API's "
        "processes; one more is answered 429.",
    )
    early_ingest_mb_per_s: float = Field(
        50.0,
        ge=0,
        description="A raw zip upload arriving this fast is expanded while it arrives (0: never).",
    )
    early_ingest_wait_seconds: float = Field(
        2.0,
        gt=0,
        description="An ingest reading an upload that is still arriving waits this long for "
        "more of it, then gives its worker slot back and goes on a few seconds later.",
    )
    max_archive_members: int = Field(100_000, ge=1, description="Files per job, nested included.")
    max_archive_mb: int = Field(20_480, ge=1, description="Total uncompressed bytes per job.")
    max_compression_ratio: int = Field(200, ge=1, description="Uncompressed/compressed per member.")
    max_image_pixels: int = Field(
        50_000_000,
        ge=1,
        description="Images with more pixels are refused before decoding (and Pillow's "
        "decompression-bomb limit); at the default one decode peaks near 430 MB.",
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Images per forward pass (GPU: 256).")
    device: Literal["cpu", "gpu"] = Field(
        "cpu",
        description="What scores: `gpu` changes the defaults of the settings marked (GPU: ...).",
    )
    decode_threads: int = Field(
        4, ge=1, le=64, description="Decoding threads per process (GPU: 8)."
    )
    tf_intra_op_threads: int = Field(1, ge=0, description="0 lets TensorFlow choose (GPU: 0).")
    tf_inter_op_threads: int = Field(2, ge=0, description="0 lets TensorFlow choose (GPU: 0).")
    worker_concurrency: int = Field(2, ge=1, description="Tasks a worker runs at once (GPU: 1).")
    worker_pool: Literal["prefork", "threads", "solo"] = Field(
        "threads",
        description="Celery pool of `pneumoscan worker`: threads share one model in memory; "
        "prefork loads one per child, so a crash costs only that child; solo (GPU) owns one GPU.",
    )
    mixed_precision: bool = Field(
        False, description="Train (and so score) in mixed precision: float16 on GPU."
    )
    broker_poll_seconds: float = Field(0.1, gt=0, description="Embedded broker polling interval.")
    sweep_seconds: float = Field(
        30.0, gt=0, description="How often beat sweeps: waiting jobs, stalled jobs, old uploads."
    )
    data_dir: Path | None = Field(
        None, description="Reference dataset (NORMAL/, PNEUMONIA/) for retraining and first runs."
    )
    holdout_dir: Path | None = Field(
        None, description="Labelled holdout for evaluation; default: 15 % of patients carved out."
    )
    stall_seconds: int = Field(
        600, ge=1, description="A job with no progress for this long gets its work sent again."
    )
    max_ingest_attempts: int = Field(
        3,
        ge=1,
        description="Starts of a job's ingest (its worker died, or the database refused what "
        "it wrote) before the job fails with the reason.",
    )
    max_batch_attempts: int = Field(
        3,
        ge=1,
        description="Passes an image may die in alongside others before it goes alone; as "
        "many more alone, and it is recorded as an error (its worker died each time).",
    )
    batch_wait_ms: int = Field(
        50,
        ge=0,
        le=10_000,
        description="How long a pass that is not full waits for more images to arrive.",
    )
    max_wait_seconds: int = Field(
        600, ge=0, description="A routine image waiting this long is scored as stat."
    )
    scoring_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Forward-pass precision on the CPU: auto takes bfloat16 where the CPU has "
        "it (AVX512_BF16 or AMX), float32 elsewhere; a GPU scores as the model was trained.",
    )
    dicom_accept_any: bool = Field(
        False, description="Score DICOM objects that are not frontal chest radiographs too."
    )
    keep_inactive_models: int = Field(
        3, ge=0, description="Artifacts kept of versions that are not active."
    )
    secret_key: str = Field(
        "",
        description="Signs the reading room's cookies; default: made once and kept in "
        "storage_dir/.secret-key (every API process reads the same).",
    )
    ui_session_hours: float = Field(
        12.0, gt=0, description="How long a reading-room sign-in lasts."
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_workers: int = Field(2, ge=1)
    api_url: str = Field("", description="Where the submit client finds the API.")
    api_key: str = Field("", description="The API key `pneumoscan submit` sends.")
    log_level: str = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _split_roots(cls, data: Any) -> Any:
        """`/mnt/a=radiology-a+radiology-b,/mnt/b`: roots, some open to named keys only."""
        if not isinstance(data, dict):
            return data
        data = {key: value for key, value in data.items() if key != "import_root_owners"}
        value = data.get("import_roots")
        if not isinstance(value, str):
            return data
        roots, owners = [], {}
        for part in value.replace(",", os.pathsep).split(os.pathsep):
            path, _, names = part.strip().partition("=")
            if not path:
                continue
            roots.append(path)
            if names:
                owners[path] = frozenset(n.strip() for n in names.split("+") if n.strip())
        return {**data, "import_roots": roots, "import_root_owners": owners}

    @field_validator("database_url")
    @classmethod
    def _parse_database_url(cls, value: str) -> str:
        if value:
            try:
                make_url(value)
            except ArgumentError as exc:
                raise ValueError(f"not a SQLAlchemy database URL: {value!r}") from exc
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_scheme(cls, value: str) -> str:
        if value and value.split("://", 1)[0] not in BROKER_SCHEMES:
            raise ValueError(f"broker URL scheme must be one of {', '.join(BROKER_SCHEMES)}")
        return value

    @model_validator(mode="after")
    def _apply_device_defaults(self) -> Settings:
        """On a GPU the forward pass is cheap: bigger batches, more decoding threads, one
        solo process owning the device, TensorFlow's own thread pools. Explicit values win."""
        if self.device == "gpu":
            for name, value in GPU_DEFAULTS.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)
        return self

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'pneumoscan.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.storage_dir == Path():
            self.storage_dir = self.home / "storage"
        self.storage_dir = self.storage_dir.expanduser().resolve()
        self.import_root_owners = {
            Path(root).expanduser().resolve(): names
            for root, names in self.import_root_owners.items()
        }
        self.import_roots = [root.expanduser().resolve() for root in self.import_roots]
        if self.data_dir is not None:
            self.data_dir = self.data_dir.expanduser().resolve()
        if self.holdout_dir is not None:
            self.holdout_dir = self.holdout_dir.expanduser().resolve()
        if not self.api_url:
            self.api_url = f"http://{self.api_host}:{self.api_port}"
        return self

    @model_validator(mode="after")
    def _import_roots_apart_from_storage(self) -> Settings:
        """Ingest deletes what it does not keep of a job's files; an import folder that shares
        the storage folder's files could lose some, or hand out other jobs' images."""
        for root in self.import_roots:
            storage = self.storage_dir
            if root == storage or storage in root.parents or root in storage.parents:
                raise ValueError(
                    f"import root {root} is, contains or lies inside the storage folder "
                    f"{storage}: keep them apart"
                )
        return self

    @property
    def database_shown(self) -> str:
        """The database URL as it may be printed: its password masked."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def stall_after(self) -> timedelta:
        return timedelta(seconds=self.stall_seconds)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once, apply explicit overrides, validate."""
    return Settings(**overrides)
