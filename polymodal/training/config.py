"""Training settings live in the config tree (`polymodal.config`); kept importable from here. `check_config`: what
the tree's types cannot say, checked when a predictor is made."""

from polymodal.config import Config, ConfigError, TrainConfig

__all__ = ["TrainConfig", "check_config"]


def check_config(cfg: Config) -> None:
    """What the tree's types cannot say: a label, a known fusion and options it takes, a fraction in (0, 1)."""
    import inspect

    from polymodal.fusion import FUSIONS

    if not cfg.data.label:
        raise ConfigError("data.label is not set: name the column to predict (label='y', --label y)")
    if cfg.fusion.name not in FUSIONS:
        raise ConfigError(f"unknown fusion {cfg.fusion.name!r} (fusion.name); choose one of {sorted(FUSIONS)}")
    takes = [n for n in inspect.signature(FUSIONS[cfg.fusion.name].__init__).parameters][5:]  # after hidden, dropout
    for key in cfg.fusion.options:
        if key not in takes:
            import difflib

            close = difflib.get_close_matches(key, takes, 1)
            hint = f"did you mean {close[0]!r}?" if close else f"it takes {takes or 'none'}"
            raise ConfigError(f"unknown option fusion.options.{key} of the {cfg.fusion.name} fusion; {hint}")
    if not 0.0 < cfg.data.valid_fraction < 1.0:
        raise ConfigError(f"data.valid_fraction must be between 0 and 1, not {cfg.data.valid_fraction}")
