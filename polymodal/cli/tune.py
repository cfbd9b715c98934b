"""polymodal tune: an Optuna search of the config space (resumable; several workers may share one study)."""

from __future__ import annotations

from pathlib import Path

import typer

from polymodal.cli.base import _fail, _run, _set_options, _settings, console, err
from polymodal.cli.options import (
    Anonymize,
    ConfigTune,
    LabelTune,
    NerModel,
    PrivacyOperator,
    SetOpt,
    SplitBy,
    TimeLimitTune,
    TrainTable,
    ValidTune,
)


def tune(
    train: TrainTable,
    label: LabelTune,
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the study, trials, best model and report"),
    trials: int = typer.Option(20, help="Total trials of the study, over every re-run and worker"),
    timeout: str | None = typer.Option(None, help="Stop starting trials after this long: 2h, 90m, 45s"),
    time_limit: TimeLimitTune = None,
    space: Path | None = typer.Option(None, help="Search space YAML: dotted paths -> ranges, choices or values"),
    storage: str | None = typer.Option(None, help="Study storage URL (default: sqlite in OUTPUT; postgresql://...)"),
    study: str = typer.Option("polymodal-tune", help="Study name inside the storage"),
    valid: ValidTune = None,
    keep: int = typer.Option(3, help="Model folders kept: the best K trials'"),
    config: ConfigTune = None,
    pruner: str = typer.Option("median", help="median | hyperband | none: stop unpromising trials after an epoch"),
    seed: int = typer.Option(0, help="Seed of the TPE sampler"),
    heartbeat: int = typer.Option(60, help="Seconds between a trial's heartbeats; silent 2x as long = failed"),
    max_retry: int = typer.Option(2, help="How often a trial whose worker died is run again"),
    set_: SetOpt = None,
    split_by: SplitBy = None,
    anonymize: Anonymize = None,
    privacy_operator: PrivacyOperator = None,
    ner_model: NerModel = None,
) -> None:
    """Search the config space with Optuna (TPE, pruning); resumable; several workers may share one study."""
    from polymodal.config import build_config
    from polymodal.studies.tune import parse_duration
    from polymodal.studies.tune import tune as run_tune

    def go():
        base = build_config(config, **_settings(**{
            "privacy.anonymize": anonymize, "privacy.operator": privacy_operator, "privacy.ner_model": ner_model,
            "data.split_by": split_by,
        }) | _set_options(set_))  # fmt: skip
        s = run_tune(
            train, label, output, trials=trials, timeout=timeout, time_limit=parse_duration(time_limit), space=space,
            storage=storage, study_name=study, valid=valid, keep=keep, config=base, pruner=pruner, seed=seed,
            heartbeat=heartbeat, max_retry=max_retry, log_fn=lambda m: console.print(m, highlight=False),
        )  # fmt: skip
        best = s["best"]
        if best is None:
            console.print(f"no trial finished; states: {s['states']}")
        else:
            console.print(f"best trial {best['number']}: {s['metric']} {best['value']:.4f}", highlight=False)
            for k, v in best["params"].items():
                console.print(f"  {k}: {v}", highlight=False)
        console.print(f"wrote {output / 'best'}, {output / 'trials.csv'}, {output / 'report.html'}")

    from polymodal.config import ConfigError
    from polymodal.studies.tune import TuneError

    try:
        _run(go)
    except (ConfigError, TuneError) as e:  # ValueErrors, but say which kind
        _fail(str(e))
    except KeyboardInterrupt:
        err.print("interrupted: run the same command again to resume the study (the trial budget is a total)")
        raise typer.Exit(code=130) from None
