"""`fleet events`: the event vocabulary as JSON Schema (exported to docs/events/, checked in CI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from events.base import event_types
from events.topics import catalog

DEFAULT_DIR = Path("docs/events")


def render_schemas() -> dict[str, str]:
    """File name -> JSON text, one schema per event type plus an index of types and topics."""
    files: dict[str, str] = {}
    index: dict[str, object] = {"event_types": {}, "topics": {}}
    for type_name, model in event_types().items():
        schema = model.model_json_schema()
        schema["$id"] = f"urn:fleet:event:{type_name}"
        schema["x-cloudevents-type"] = type_name
        files[f"{type_name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        index["event_types"][type_name] = {"model": f"{model.__module__}.{model.__name__}"}  # type: ignore[index]
    for spec in catalog():
        index["topics"][spec.name] = {  # type: ignore[index]
            "partitions": spec.partitions,
            "retention_ms": spec.retention_ms,
            "cleanup_policy": spec.cleanup_policy,
            "description": spec.description,
        }
    files["index.json"] = json.dumps(index, indent=2, sort_keys=True) + "\n"
    return files


@click.group(name="events")
def group() -> None:
    """The event vocabulary: types, schemas, topics."""


@group.command("schemas")
@click.option("--dir", "out_dir", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True)
@click.option("--check", is_flag=True, help="Fail if the files on disk differ from the models (CI).")
def schemas(out_dir: Path, check: bool) -> None:
    """Export the JSON Schema of every event type (or check the exported files are current)."""
    wanted = render_schemas()
    present = {p.name for p in out_dir.glob("*.json")} if out_dir.exists() else set()
    stale = sorted(n for n, text in wanted.items() if not (out_dir / n).exists() or (out_dir / n).read_text() != text)
    extra = sorted(present - set(wanted))
    if check:
        if stale or extra:
            click.echo(f"docs/events is out of date: changed {stale or '-'}, removed {extra or '-'}", err=True)
            click.echo("run: fleet events schemas", err=True)
            sys.exit(1)
        click.echo(f"event schemas current ({len(wanted)} files)")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (out_dir / name).write_text(wanted[name])
    for name in extra:
        (out_dir / name).unlink()
    click.echo(f"event schemas: {len(stale)} written, {len(extra)} removed, {len(wanted)} total in {out_dir}")
