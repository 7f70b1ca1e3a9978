"""Write (or check) ``docs/schemas/*.json`` and the field reference of ``docs/mqtt.md``
from the payload models.

    python -m station.mqtt.schemas            # rewrite docs/schemas/ and the reference
    python -m station.mqtt.schemas --check    # exit 1 listing stale files (CI)

The same schemas are published retained on ``<root>/<id>/schema/<name>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from station.mqtt.messages import json_schemas

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"
DOC = DEFAULT_DIR.parent / "mqtt.md"
BEGIN = "<!-- BEGIN GENERATED FIELD REFERENCE (python -m station.mqtt.schemas) -->"
END = "<!-- END GENERATED FIELD REFERENCE -->"


def _type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[1]
        target = defs.get(name, {})
        if "enum" in target:
            return " \\| ".join(f"`{v}`" for v in target["enum"])
        return name
    if "anyOf" in prop:
        return " or ".join(_type(p, defs) for p in prop["anyOf"])
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    t = prop.get("type", "any")
    if t == "array":
        return f"list of {_type(prop.get('items', {}), defs)}"
    if t == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        return f"object of {_type(prop['additionalProperties'], defs)}"
    if t == "string" and prop.get("format") == "date-time":
        return "UTC time"
    return str(t)


def _table(title: str, schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = [f"#### {title}", ""]
    doc = (schema.get("description") or "").strip().replace("\n", " ")
    if doc:
        lines += [doc, ""]
    lines += ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        desc = (prop.get("description") or "").replace("|", "\\|").replace("\n", " ")
        if "default" in prop and name not in required:
            desc += f" Default `{json.dumps(prop['default'])}`."
        lines.append(f"| `{name}` | {_type(prop, defs)} | {'yes' if name in required else 'no'} | {desc} |")
    return lines + [""]


def render_reference() -> str:
    """The Markdown field reference of every payload (between the markers in docs/mqtt.md)."""
    out = [BEGIN, ""]
    for name, schema in json_schemas().items():
        defs = schema.get("$defs", {})
        out += _table(f"`{name}` ([schema](schemas/{name}.json))", schema, defs)
        for sub, sub_schema in defs.items():
            if "properties" in sub_schema:
                out += _table(f"`{name}` → {sub}", sub_schema, defs)
    return "\n".join(out + [END])


def _doc_with_reference(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOC} lacks the generated-reference markers")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + render_reference() + tail


def render() -> dict[str, str]:
    """File name -> file text for every schema (stable: sorted keys, 2-space indent)."""
    return {f"{name}.json": json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            for name, schema in json_schemas().items()}


def stale_files(directory: Path) -> list[str]:
    """Names of schema files missing, different, or no longer generated in ``directory``."""
    wanted = render()
    problems = [name for name, text in wanted.items()
                if not (directory / name).is_file() or (directory / name).read_text() != text]
    problems += [p.name for p in directory.glob("*.json") if p.name not in wanted]
    doc = directory.parent / "mqtt.md"
    if doc.is_file():
        text = doc.read_text()
        if BEGIN not in text or _doc_with_reference(text) != text:
            problems.append("../mqtt.md (field reference)")
    return sorted(problems)


def write(directory: Path) -> list[str]:
    """Rewrite the schema files; remove ones no model produces any more."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = render()
    for p in directory.glob("*.json"):
        if p.name not in wanted:
            p.unlink()
    for name, text in wanted.items():
        (directory / name).write_text(text)
    doc = directory.parent / "mqtt.md"
    if doc.is_file():
        doc.write_text(_doc_with_reference(doc.read_text()))
    return sorted(wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m station.mqtt.schemas", description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.directory)
        if stale:
            print(f"{args.directory}: stale JSON schemas: {', '.join(stale)}; run "
                  "`python -m station.mqtt.schemas` to regenerate", file=sys.stderr)
            return 1
        print(f"{args.directory}: JSON schemas are current")
        return 0
    names = write(args.directory)
    print(f"wrote {len(names)} schemas to {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
