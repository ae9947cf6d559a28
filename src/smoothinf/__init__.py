"""smoothinf: smoothed inference for adversarial robustness.

Pixels are NCHW float32 in [0, 1]; normalisation is a layer inside each model; noise sigma and
attack eps are in pixel units.
"""

__version__ = "0.1.0"

from smoothinf.attacks import (  # noqa: E402
    EPGD,
    FGSM,
    PGD,
    AutoAttackAdapter,
    NAttack,
    RobustResult,
    SmoothAdv,
    TransferAttack,
    build_attack,
    list_attacks,
    robust_accuracy,
)
from smoothinf.data import (  # noqa: E402
    DatasetInfo,
    ImageDataset,
    augment_crop_flip,
    get_dataset_info,
    list_datasets,
    load_dataset,
    load_splits,
)
from smoothinf.evaluation import EvalConfig, evaluate, write_report  # noqa: E402
from smoothinf.models import (  # noqa: E402
    Normalize,
    create_model,
    create_model_for,
    list_models,
    load_checkpoint,
    load_legacy_checkpoint,
    save_checkpoint,
)
from smoothinf.noise import (  # noqa: E402
    NOISE_KINDS,
    NoiseDistribution,
    inject_noise,
    noise_disabled,
    noise_summary,
    per_draw_noise,
    set_noise,
)
from smoothinf.smoothing import (  # noqa: E402
    SmoothedClassifier,
    certify,
    exponential_rank,
    predict_with_abstain,
    reciprocal_rank,
    top_k,
)
from smoothinf.training import COGuard, COGuardConfig, SingleStep, build_objective  # noqa: E402
from smoothinf.training.trainer import TrainConfig, train  # noqa: E402
from smoothinf.utils import tune_cpu_allocator  # noqa: E402

__all__ = [
    "EPGD",
    "FGSM",
    "NOISE_KINDS",
    "PGD",
    "AutoAttackAdapter",
    "COGuard",
    "COGuardConfig",
    "DatasetInfo",
    "EvalConfig",
    "ImageDataset",
    "NAttack",
    "NoiseDistribution",
    "Normalize",
    "RobustResult",
    "SingleStep",
    "SmoothAdv",
    "SmoothedClassifier",
    "TrainConfig",
    "TransferAttack",
    "augment_crop_flip",
    "build_attack",
    "build_objective",
    "certify",
    "create_model",
    "create_model_for",
    "evaluate",
    "exponential_rank",
    "get_dataset_info",
    "inject_noise",
    "list_attacks",
    "list_datasets",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "load_legacy_checkpoint",
    "load_splits",
    "noise_disabled",
    "noise_summary",
    "per_draw_noise",
    "predict_with_abstain",
    "reciprocal_rank",
    "robust_accuracy",
    "save_checkpoint",
    "set_noise",
    "top_k",
    "train",
    "tune_cpu_allocator",
    "write_report",
]
