"""The experiment config: YAML -> frozen, typed dataclasses with strict keys (`schema`), the
constraints declared beside each field (`rules`) and the handling of relative paths (`paths`)."""

from retinanet.config.schema import (BAD_FILE_POLICIES, BOX_LOSSES, CROSS_FIELD_RULES, IMAGE_GATINGS, OPTIMIZERS,
                                     PRECISIONS, RENAMED_KEYS, RETIRED_KEYS, SCHEDULES, STRATEGIES, AnchorConfig,
                                     AugmentationConfig, Config, ConfigError, DataConfig, EvaluationConfig, LossConfig,
                                     ModelConfig, PostprocessingConfig, PreprocessingConfig, RuntimeConfig,
                                     SyntheticConfig, TrainingConfig, config_from_dict, load_config, save_config,
                                     to_dict)

__all__ = ["BAD_FILE_POLICIES", "BOX_LOSSES", "CROSS_FIELD_RULES", "IMAGE_GATINGS", "OPTIMIZERS", "PRECISIONS",
           "RENAMED_KEYS", "RETIRED_KEYS", "SCHEDULES", "STRATEGIES", "AnchorConfig", "AugmentationConfig", "Config",
           "ConfigError", "DataConfig", "EvaluationConfig", "LossConfig", "ModelConfig", "PostprocessingConfig",
           "PreprocessingConfig", "RuntimeConfig", "SyntheticConfig", "TrainingConfig", "config_from_dict",
           "load_config", "save_config", "to_dict"]
