"""Model zoo (created by name, normalisation inside) and safe checkpoints.

>>> from smoothinf.models import create_model
>>> model = create_model("resnet20", 10, 3, mean=(0.491, 0.482, 0.447), std=(0.247, 0.243, 0.262))
"""

from smoothinf.models import cnn, lenet, linear, resnet, wide_resnet  # noqa: F401  (register the zoo)
from smoothinf.models.checkpoint import load_checkpoint, read_sidecar, save_checkpoint
from smoothinf.models.inputs import ExpectedInput, check_model_input, expected_input
from smoothinf.models.legacy import load_legacy_checkpoint
from smoothinf.models.normalize import ImageClassifier, Normalize
from smoothinf.models.registry import (
    ModelSpec,
    count_parameters,
    create_model,
    create_model_for,
    get_model_spec,
    list_models,
    parameter_count,
    register_model,
)

__all__ = [
    "ExpectedInput",
    "ImageClassifier",
    "ModelSpec",
    "Normalize",
    "check_model_input",
    "count_parameters",
    "create_model",
    "create_model_for",
    "expected_input",
    "get_model_spec",
    "list_models",
    "load_checkpoint",
    "load_legacy_checkpoint",
    "parameter_count",
    "read_sidecar",
    "register_model",
    "save_checkpoint",
]
