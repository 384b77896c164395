"""The allowed values of each choice, as StrEnums: Settings, the API's schemas, the CLI's
options and training all read these, so a value is added or removed in one place."""

from __future__ import annotations

from enum import StrEnum


class Architecture(StrEnum):
    INCEPTION_RESNET_V2 = "inception_resnet_v2"
    BASELINE_CNN = "baseline_cnn"


class Augmentation(StrEnum):
    """What each does: training/augment.py."""

    NONE = "none"
    THRESHOLD = "threshold"
    STANDARD = "standard"
    ROBUST = "robust"
    ROBUST_RESOLUTION = "robust-resolution"
    ACQUISITION = "acquisition"
    BOTH = "both"


class Optimizer(StrEnum):
    """What each does: training/model.compile_model."""

    SGD = "sgd"
    SGD_COSINE = "sgd-cosine"
    ADAMW_COSINE = "adamw-cosine"


class ActivationPolicy(StrEnum):
    """What a training run does with the version it made (training/gate.py)."""

    IF_BETTER = "if-better"
    ALWAYS = "always"
    NEVER = "never"


def values(choice: type[StrEnum]) -> list[str]:
    """The allowed values, in the order they are declared (for schemas and `click.Choice`)."""
    return [member.value for member in choice]
