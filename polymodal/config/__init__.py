"""The one config tree: every setting of a model, named by a dotted path (`train.lr`, `fusion.name`,
`encoders.image.embed_dim`).

`MultimodalPredictor(**kwargs)`, `polymodal fit --config cfg.yaml` (flags and `--set path=value` override the
file), a tuning search space and the model folder's config.json all read and write this one object. Plain
dataclasses, no heavy imports: loading a model for inference reads it too.

The package: `sections` (the dataclasses), `tree` (`Config`, dotted paths, the messages naming the closest
valid key), `build` (`build_config`, `parse_value`, `from_legacy`), `checks` (`ConfigError`, type checks).
"""

from polymodal.config.build import build_config, from_legacy, parse_value
from polymodal.config.checks import ConfigError
from polymodal.config.sections import (
    BAD_ROW_POLICIES,
    IMAGE_FITS,
    PRESETS,
    AlignConfig,
    DataConfig,
    EncodersConfig,
    FusionConfig,
    ModalityEncoderConfig,
    PreprocessConfig,
    PrivacyConfig,
    RLConfig,
    TabularEncoderConfig,
    TrainConfig,
)
from polymodal.config.tree import (
    ALIASES,
    FLAT_KEYWORDS,
    SECTIONS,
    Config,
    TreeSettings,
    closest_key,
    leaf_type,
    unknown_key_message,
)

__all__ = [
    "ALIASES",
    "BAD_ROW_POLICIES",
    "FLAT_KEYWORDS",
    "IMAGE_FITS",
    "PRESETS",
    "SECTIONS",
    "AlignConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EncodersConfig",
    "FusionConfig",
    "ModalityEncoderConfig",
    "PreprocessConfig",
    "PrivacyConfig",
    "RLConfig",
    "TabularEncoderConfig",
    "TrainConfig",
    "TreeSettings",
    "build_config",
    "closest_key",
    "from_legacy",
    "leaf_type",
    "parse_value",
    "unknown_key_message",
]
