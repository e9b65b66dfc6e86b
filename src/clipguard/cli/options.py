"""Options shared by the commands, and where their defaults come from.

Every default of an option is read from the library (a config dataclass or the signature of the
function the command calls), never written again here, so that ``clipguard X`` and the Python
function behind it behave the same when given the same arguments.
"""
from __future__ import annotations

import inspect
import json
from typing import Any, Callable

import click

from clipguard.errors import ConfigError
from clipguard.utils.device import DEFAULT_DEVICE, PRECISIONS

__all__ = ["PRECISIONS", "default_of", "device_option", "echo_json", "out_option", "param_option",
           "parse_params", "precision_option", "seed_option", "distributor_options", "DISTRIBUTOR_NAMES"]

DISTRIBUTOR_NAMES = ("sequential", "ray")
"""``clipguard.distributed.DISTRIBUTORS.names()``, written here so that ``--help`` does not import
the engines (a test keeps the two equal)."""

_DEVICE_HELP = "Where the model runs: auto (the GPU if torch sees one, else the CPU), cpu, cuda, cuda:N."


def default_of(func: Callable[..., Any], name: str) -> Any:
    """The default value of keyword ``name`` in ``func``'s signature (the library's default).

    Raises:
        TypeError: ``func`` has no parameter ``name`` with a default (a bug in the CLI, not a
            user error: it fails on import, in every test).
    """
    param = inspect.signature(func).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        raise TypeError(f"{func.__qualname__} has no parameter {name!r} with a default")
    return param.default


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``("size=8", "pattern=noise")`` -> ``{"size": 8, "pattern": "noise"}``.

    Values are parsed as JSON where they can be (numbers, lists, objects, true/false), else kept as
    strings.

    Raises:
        ConfigError: an item without ``=`` or with an empty name.
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE, e.g. --param size=8")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def _params_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any]:
    return parse_params(value)


def param_option(help: str) -> Callable:
    """``--param NAME=VALUE`` (repeatable), given to the command as a dict (see :func:`parse_params`)."""
    return click.option("--param", "params", multiple=True, callback=_params_callback, help=help)


def device_option(help: str = _DEVICE_HELP) -> Callable:
    """``--device auto|cpu|cuda[:N]``, default :data:`~clipguard.utils.device.DEFAULT_DEVICE`."""
    return click.option("--device", default=DEFAULT_DEVICE, show_default=True, help=help)


def seed_option(default: int) -> Callable:
    """``--seed N`` with the library's default."""
    return click.option("--seed", default=default, show_default=True, help="Random seed.")


def precision_option(default: str, help: str) -> Callable:
    """``--precision fp32|bf16`` with the library's default."""
    return click.option("--precision", default=default, show_default=True, type=click.Choice(PRECISIONS),
                        help=help)


def out_option(help: str, **kwargs: Any) -> Callable:
    """``--out DIR`` (required unless ``required=False`` or a ``default`` is given)."""
    kwargs.setdefault("required", "default" not in kwargs)
    return click.option("--out", type=click.Path(file_okay=False), help=help, **kwargs)


def echo_json(data: dict) -> None:
    """Print ``data`` as indented JSON."""
    click.echo(json.dumps(data, indent=2, default=str))


def distributor_options(f: Callable) -> Callable:
    """``--distributor``, ``--address``, ``--processes``, ``--retries``: where the shards run
    (:mod:`clipguard.distributed`)."""
    for option in reversed((
        click.option("--distributor", default="sequential", show_default=True, type=click.Choice(DISTRIBUTOR_NAMES),
                     help="sequential: shard by shard in this process; ray: on a Ray cluster "
                          "(pip install 'clipguard[ray]'). Both resume a killed run."),
        click.option("--address", default=None,
                     help="Ray cluster to attach to, e.g. auto [default: $RAY_ADDRESS, else a local cluster on "
                          "127.0.0.1, stopped at the end]."),
        click.option("--processes", type=int, default=None,
                     help="Worker processes of --distributor ray [default: one per CPU (embed: per GPU)]."),
        click.option("--retries", default=2, show_default=True,
                     help="Further attempts of a failed shard; shards that still fail are listed at the end."),
    )):
        f = option(f)
    return f
