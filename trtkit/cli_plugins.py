"""`trtkit plugins`: the custom MoE/attention plugins, where each is registered and whether it can run
on this machine (a thin layer over plugins.registry; nothing is registered by listing)."""

from __future__ import annotations

import json

import click

from plugins.registry import list_plugins


@click.group()
def plugins() -> None:
    """trtkit::moe and trtkit::attention for PyTorch, TensorRT-LLM and TensorRT."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
def list_command(as_json: bool) -> None:
    """Each plugin, each registration (the module to import) and whether it is usable here, or why not."""
    found = list_plugins()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in found], indent=2))
        return
    width = max(len(r.module) for p in found for r in p.registrations)
    for p in found:
        click.echo(f"{p.name}: {p.summary}")
        for r in p.registrations:
            click.echo(f"  {r.target:<13} {'yes' if r.available else 'no':<4} {r.module:<{width}} {r.detail}")
