"""polymodal rl train / evaluate: DQN and PPO agents with the polymodal extractor (the `rl` extra)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from polymodal.cli.base import _fail, _run, _set_options, _settings, console
from polymodal.cli.options import ConfigOpt, EmbedDimRL, FusionRL, Seed, SetOpt

rl_app = typer.Typer(
    no_args_is_help=True, help="Train, evaluate and compare DQN/QR-DQN/PPO agents on multimodal observations."
)


def _rl_run(fn: Callable[[], Any]) -> Any:
    """As _run, plus the RL set-up errors (unknown env id, action space, observation key) and a missing extra."""
    try:
        from polymodal.rl import ObservationError, RLSetupError
    except ImportError as e:
        _fail(f"polymodal rl needs the rl extra: pip install 'polymodal[rl]' ({e})")
    try:
        return _run(fn)
    except (RLSetupError, ObservationError) as e:
        _fail(str(e))


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            _fail(f"{what} takes KEY=VALUE, not {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


@rl_app.command("train")
def rl_train(
    output: Path = typer.Option(..., "--output", "-o", help="Policy folder to write"),
    env: str | None = typer.Option(None, "--env", help="A gymnasium env id, e.g. BabyAI-GoToLocalS6N2-v0 (rl.env_id)"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    algo: str | None = typer.Option(None, help="dqn | qrdqn | ppo [ppo]"),
    steps: int | None = typer.Option(None, help="Environment steps to train for [50000]"),
    fusion: FusionRL = None,
    seed: Seed = None,
    n_envs: int | None = typer.Option(None, help="Parallel envs (default: 1 for DQN, 8 for PPO)"),
    embed_dim: EmbedDimRL = None,
    eval_every: int | None = typer.Option(None, help="Evaluate every this many steps (the learning curve) [5000]"),
    eval_episodes: int | None = typer.Option(None, help="Episodes per periodic evaluation [50]"),
    keep_best: bool | None = typer.Option(
        None, "--keep-best/--keep-last", help="End on the weights of the best periodic evaluation, or the last [best]"
    ),
    hide: list[str] | None = typer.Option(None, help="Observation key the agent does not see (repeatable)"),
    modality: list[str] | None = typer.Option(None, help="KEY=MODALITY: encode this key as text/image/... "),
    param: list[str] | None = typer.Option(None, help="NAME=VALUE: an SB3 hyper-parameter (JSON value)"),
    env_kwarg: list[str] | None = typer.Option(None, help="NAME=VALUE: a gymnasium.make keyword (JSON value)"),
    from_model: Path | None = typer.Option(None, help="Transfer encoders from this polymodal model folder"),
    transfer: list[str] | None = typer.Option(None, help="KEY=INPUT: observation key <- the model's input"),
    freeze: bool | None = typer.Option(
        None, "--freeze/--finetune", help="Freeze transferred encoders, or train them [freeze]"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar"),
) -> None:
    """Train a DQN or PPO agent with polymodal encoders and fusion; save the policy (safetensors + JSON).

    The settings are the config tree's rl section (`polymodal config`): give a YAML file with --config, then flags
    and --set rl.PATH=VALUE override it."""

    def values(items: list[str] | None, what: str) -> dict:
        def parse(v: str):
            try:
                return json.loads(v)
            except json.JSONDecodeError:  # a bare word is a string
                return v

        return {k: parse(v) for k, v in _pairs(items, what).items()}

    def go():
        from dataclasses import asdict

        from polymodal.config import build_config
        from polymodal.rl import AgentConfig, train

        flags = _settings(
            env_id=env, algo=algo, steps=steps, fusion=fusion, seed=seed, n_envs=n_envs, embed_dim=embed_dim,
            eval_every=eval_every, eval_episodes=eval_episodes, keep_best=keep_best, hide=hide,
            modalities=_pairs(modality, "--modality"),
            hyperparameters=values(param, "--param"), env_kwargs=values(env_kwarg, "--env-kwarg"),
            model=str(from_model) if from_model else None, transfer=_pairs(transfer, "--transfer"), freeze=freeze,
        )  # fmt: skip
        flags = {k: v for k, v in flags.items() if v != {}}
        tree = build_config(config, **{f"rl.{k}": v for k, v in flags.items()}, **_set_options(set_))
        cfg = AgentConfig(**asdict(tree.rl))
        agent = train(cfg, progress_bar=progress)
        folder = agent.save(output)
        last = agent.kept.get("point") or agent.history[-1]
        sampled = agent.final_sampled
        also = f" (sampled actions {sampled['success_rate']:.2f})" if sampled else ""
        kept = (f"the weights of step {last['steps']} (its best evaluation), not the last step's"
                if agent.kept.get("restored") else f"after {agent.history[-1]['steps']} steps")  # fmt: skip
        console.print(
            f"{cfg.algo} on {cfg.env_id}: success {last['success_rate']:.2f}{also}, return {last['mean_return']:.3f} "
            f"with {kept} ({agent.train_seconds:.0f} s); saved policy to {folder}"
        )

    _rl_run(go)


@rl_app.command("evaluate")
def rl_evaluate(
    policy: Path = typer.Argument(..., help="Policy folder written by `polymodal rl train`"),
    episodes: int = typer.Option(100, help="Evaluation episodes (seeded)"),
    seed: int = typer.Option(1_000_000, help="Seed of the first episode (and of the sampled actions)"),
    sample: bool = typer.Option(
        False, "--sample", help="Sample the actions from the policy (PPO's distribution) instead of its most probable"
    ),
) -> None:
    """Success rate, mean return and episode length of a saved policy on its env."""

    def go():
        from polymodal.rl import Agent

        agent = Agent.load(policy)
        r = agent.evaluate(episodes, seed, deterministic=not sample)
        console.print(
            f"{agent.config.env_id}: success {r['success_rate']:.3f}, return {r['mean_return']:.3f}, "
            f"length {r['mean_length']:.1f}, cut by the time limit {r['time_limit_rate']:.3f} over {episodes} "
            f"episodes ({'sampled' if sample else 'deterministic'} actions)"
        )
        console.print_json(json.dumps(r))

    _rl_run(go)


@rl_app.command("report")
def rl_report(
    policies: list[Path] = typer.Argument(..., help="Policy folders written by `polymodal rl train` (one or more)"),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the figures"),
    title: str = typer.Option("", help="Title of the side-by-side figure"),
) -> None:
    """Several runs side by side: success, return, episode length, Q values and TD error against steps
    (curves.png), and each DQN run's diagnostics next to its success curve (NAME.diagnostics.png)."""

    def go():
        from polymodal.rl.curves import report

        rows = report(policies, output, title)
        for r in rows:
            console.print(
                f"{r['name']}: final success {r['final']:.3f}, best {r['best']:.3f} at {r['best_steps']} steps"
                + (f", diagnostics {r['diagnostics']}" if r.get("diagnostics") else "")
            )
        console.print(f"wrote {output / 'curves.png'}")

    _rl_run(go)
