"""Write (or check) ``docs/schemas/*.json`` from the payload models.

    python -m station.mqtt.schemas            # rewrite docs/schemas/
    python -m station.mqtt.schemas --check    # exit 1 listing stale files (CI)

The same schemas are published retained on ``<root>/<id>/schema/<name>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from station.mqtt.messages import json_schemas

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"


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
