"""The settings of training runs and their gate; `core.config.Settings` inherits them."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.choices import Architecture, Augmentation, Optimizer


class TrainingSettings(BaseSettings):
    """PNEUMOSCAN_TRAIN_*, the gate's margins, the nightly schedule."""

    model_config = SettingsConfigDict(env_prefix="PNEUMOSCAN_", extra="ignore")

    min_sensitivity: float = Field(
        0.95, gt=0, le=1, description="The decision threshold keeps sensitivity at least this."
    )
    gate_auroc_margin: float = Field(
        0.01, ge=0, le=1, description="A candidate may trail the active model's AUROC by this."
    )
    gate_specificity_margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="A candidate may trail the active model's stressed specificity by this.",
    )
    retrain_cron: str = Field("0 2 * * *", description="When beat starts the nightly retraining.")
    train_architecture: Architecture = Field(
        Architecture.INCEPTION_RESNET_V2, description="Default architecture."
    )
    train_epochs: int = Field(40, ge=1, description="Default epochs of a training run.")
    max_training_labels: int = Field(
        20_000,
        ge=0,
        description="Confirmed labels one training run reads (the most recent; the rest are "
        "counted as left out): at 75x75 the default holds about 340 MB of images.",
    )
    train_batch_size: int = Field(100, ge=1, description="Images per training step.")
    train_augment: Augmentation = Field(
        Augmentation.ACQUISITION,
        description="none, threshold (copy with pixels < 25 set to 0), standard, robust, "
        "robust-resolution, acquisition, or both.",
    )
    train_weights: str = Field("none", description="Backbone start: none, imagenet, or a file.")
    train_input_size: int = Field(75, ge=32, le=512, description="Model input side in pixels.")
    train_optimizer: Optimizer = Field(
        Optimizer.SGD_COSINE,
        description="The write-up's constant SGD, or a cosine-decayed SGD or AdamW.",
    )
    train_label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Label smoothing.")
    train_preprocessing: str = Field(
        "equalize", description="squash, equalize, trimN or trimN+equalize (core/imaging.py)."
    )
    train_batch_norm_recalibration: bool = Field(
        False, description="Recompute BatchNorm statistics on the training images at the end."
    )
    train_ensemble: int = Field(
        1, ge=1, le=8, description="Seeds trained and averaged in one model."
    )
    train_tta_views: int = Field(
        1, ge=1, le=6, description="Test-time views averaged inside the saved model (1: none)."
    )
    training_stale_minutes: int = Field(
        120, ge=1, description="A run silent this long lost its worker and stops blocking others."
    )

    @field_validator("retrain_cron")
    @classmethod
    def _five_cron_fields(cls, value: str) -> str:
        from celery.schedules import ParseException, crontab

        if len(value.split()) != 5:
            raise ValueError("give five cron fields: minute hour day-of-month month day-of-week")
        try:
            crontab.from_string(value)
        except (ParseException, ValueError) as exc:
            raise ValueError(f"not a cron expression: {exc}") from exc
        return value

    @field_validator("train_preprocessing")
    @classmethod
    def _known_preprocessing(cls, value: str) -> str:
        from core.imaging import Preprocessing

        return Preprocessing.parse(value).name

    @property
    def training_stale_after(self) -> timedelta:
        return timedelta(minutes=self.training_stale_minutes)
