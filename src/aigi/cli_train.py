"""``aigi train <recipe>``: one command per registered recipe, generated from the recipe's config fields (their
types, defaults, descriptions and bounds) and the detector parameters it offers, so that no default is written twice.

``--config FILE`` repeats a run: a model folder (or its ``config.json``) whose training record names this recipe, a
memory folder, or a JSON object of settings; options given on the command line override it.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import typer
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from aigi import cli_tables as show
from aigi.cli_errors import AigiGroup
from aigi.errors import ConfigError

SKIPPED = {"params"}
BACKBONE_OPTIONS = (
    "backbone",
    "backbone_source",
    "feature_level",
    "format_align",
)  # filled from the detector's parameter options instead
CONFIG_HELP = "Settings of an earlier run to repeat: a model or memory folder (or its config.json), or a JSON object; options given here override it."


class TrainGroup(AigiGroup):
    """`aigi train`: its commands are made from the recipe registry when first asked for, so that other commands
    (and `aigi --help`) do not import every detector at start-up."""

    def list_commands(self, ctx):
        from aigi.engine.trainer import recipe_names

        return recipe_names()

    def get_command(self, ctx, name):
        from aigi.engine.trainer import get_recipe

        if name not in self.list_commands(ctx):
            return None
        recipe = get_recipe(name)
        single = typer.Typer(rich_markup_mode=None)  # plain help: rich's table cuts long option names at 80 columns
        single.command(name, help=(recipe.__doc__ or "").strip())(_command(name, recipe))
        return typer.main.get_command(single)

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.list_commands(ctx):
            from aigi.engine.trainer import get_recipe

            get_recipe(args[0])  # an unknown name: "did you mean" from the registry, as one error line
        return super().resolve_command(ctx, args)


def _command(name: str, recipe) -> Any:
    options = _options(recipe)

    def command(**given: Any) -> None:
        run_recipe(name, recipe, given)

    command.__signature__ = inspect.Signature([p for p, _ in options.values()])
    command.__annotations__ = {k: p.annotation for k, (p, _) in options.items()}
    command.__name__ = f"train_{name.replace('-', '_')}"
    return command


def _options(recipe) -> dict[str, tuple[inspect.Parameter, str]]:
    """Parameter -> where it goes ("config", "params" or "file") for every option of the command."""
    options: dict[str, tuple[inspect.Parameter, str]] = {}
    fields = recipe.Config.model_fields
    for field_name in sorted(fields, key=lambda k: not fields[k].is_required()):  # required first, then as declared
        info = fields[field_name]
        if field_name not in SKIPPED and _simple(info.annotation):
            options[field_name] = (_parameter(field_name, info), "config")
    params = _detector_params(recipe)
    for field_name in recipe.param_options:
        options[field_name] = (_parameter(field_name, params.model_fields[field_name]), "params")
    file_opt = typer.Option(None, "--config", help=CONFIG_HELP)
    options["config_file"] = (
        inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=file_opt, annotation=Optional[Path]),
        "file",
    )
    return options


def _detector_params(recipe) -> type[BaseModel]:
    from aigi.detectors import get_detector

    return get_detector(recipe.detector).Params if recipe.param_options else BaseModel


def _base(annotation) -> tuple[Any, tuple]:
    """``(python type for typer, choices)`` of a field: ``X | None`` -> X, a Literal -> str and its values."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str, typing.get_args(annotation)
    return annotation, ()


SIMPLE_TYPES = (int, float, str, bool, Path)


def _simple(annotation) -> bool:
    """A type an option can take: a simple one, or a list of one (a repeated option, e.g. ``--member A --member B``)."""
    kind = _base(annotation)[0]
    if typing.get_origin(kind) is list:
        return typing.get_args(kind)[0] in SIMPLE_TYPES
    return kind in SIMPLE_TYPES


def _parameter(field_name: str, info: FieldInfo) -> inspect.Parameter:
    kind, choices = _base(info.annotation)
    bounds = {}
    for m in info.metadata:
        for cls, attr, key in ((Ge, "ge", "min"), (Gt, "gt", "min"), (Le, "le", "max"), (Lt, "lt", "max")):
            if isinstance(m, cls):  # strict bounds are left to the config's own check
                bounds[key] = getattr(m, attr)
    required = info.is_required()
    help_text = (info.description or "").rstrip(".") + (f" (one of: {', '.join(map(str, choices))})" if choices else "")
    if not required and info.default is not None:
        help_text += f" (default: {'on' if info.default is True else 'off' if info.default is False else info.default})"
    flag = "--" + field_name.replace("_", "-")
    decls = [flag] if kind is not bool else [f"{flag}/--no-{flag[2:]}"]
    decls += {"data": ["-d"], "out": ["-o"]}.get(field_name, [])
    if bounds and kind is int:
        bounds = {k: int(v) for k, v in bounds.items()}
    extra = {} if kind is bool or not bounds else dict(bounds)
    if typing.get_origin(kind) is list:  # a repeated option: name what each one takes, not the list
        extra["metavar"] = f"<{typing.get_args(kind)[0].__name__.lower()}>"
    option = typer.Option(
        None, *decls, help=help_text + (" (required)" if required else ""), show_default=False, **extra
    )
    return inspect.Parameter(field_name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[kind])


def run_recipe(name: str, recipe, given: dict[str, Any]) -> None:
    from aigi.engine.trainer import recipe_config, train

    options = _options(recipe)
    values = settings_from_file(given.pop("config_file"), name) if given.get("config_file") else {}
    if any(given.get(k) is not None for k in BACKBONE_OPTIONS):  # options typed now beat a recorded whole spec
        values.pop("spec", None), values.pop("eval_protocol", None)
    if not isinstance(values.setdefault("params", {}), dict):
        raise ConfigError("--config: 'params' must be a JSON object of detector parameters")
    for key, value in given.items():
        if value is not None and options[key][1] == "params":
            values["params"][key] = value
        elif value is not None:
            values[key] = value
    _check_params(recipe, values["params"])
    missing = [k for k, info in recipe.Config.model_fields.items() if info.is_required() and k not in values]
    if missing:
        raise ConfigError(", ".join("--" + k.replace("_", "-") for k in missing) + " required (or --config)")
    result = train(name, recipe_config(name, values))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun / accelerate launch only the first process wrote it
        show.say(recipe.describe(result, Path(values["out"])))


def _check_params(recipe, params: dict) -> None:
    """Detector parameters given as options are checked first, and named as the options they came from."""
    from pydantic import ValidationError

    if not recipe.param_options:
        return
    try:
        _detector_params(recipe)(**params)
    except ValidationError as e:
        problems = [f"--{'.'.join(map(str, x['loc'])).replace('_', '-')}: {x['msg']}" for x in e.errors()]
        raise ConfigError("; ".join(problems)) from None


def settings_from_file(path: Path, name: str) -> dict:
    """The settings recorded by an earlier run (see the module docstring)."""
    from aigi.io import read_json

    path = path / "config.json" if path.is_dir() else path
    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a JSON object")
    if raw.get("kind") == "mirror-memory":
        return {
            **raw.get("recipe", {}),
            "data": raw.get("training", {}).get("data"),
            "spec": raw.get("backbone"),
            "eval_protocol": raw.get("protocol"),
        }
    if "detector" in raw:
        training = raw.get("training") or {}
        if training.get("recipe") != name or not isinstance(training.get("config"), dict):
            raise ConfigError(
                f"--config {path}: its training record is not from `aigi train {name}` "
                f"(recipe: {training.get('recipe', 'none recorded')})"
            )
        return dict(training["config"])
    return dict(raw)
