#!/usr/bin/env python3
"""Generates `flit_cache/_rules.json`, the door's field rules, from `schemas/`.

The installed package cannot read the repository's `schemas/`, so it carries
this generated copy. The derivation is the one `src/event/schema.rs` makes
(`EventSchema::build`): a kind's checked fields are its table's columns
without the event column (`raw` / `json_body`) and `_ingestion_timestamp`,
and for transactions also the body contract
`raw_bnpl_txs_json.json_body.json`. The id, time and fallback-time field
names are the Rust constants (`src/store/keys.rs`, `src/event/check.rs`);
they are checked against the schemas here as the Rust build checks them.

    python clients/python/tools/gen_rules.py            # rewrite _rules.json
    python clients/python/tools/gen_rules.py --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve()
REPO = HERE.parents[3]
SCHEMAS = REPO / "schemas"
OUTPUT = HERE.parents[1] / "flit_cache" / "_rules.json"

INGESTION_COLUMN = "_ingestion_timestamp"
TRANSACTION_BODY = "raw_bnpl_txs_json.json_body.json"

# What `src/store/keys.rs` and `src/event/{schema,check}.rs` hard-code per
# kind; everything else comes from schemas/.
KINDS: Dict[str, Dict[str, Optional[str]]] = {
    "transactions": {
        "table": "raw_bnpl_txs_json",
        "event_column": "json_body",
        "id_field": "transaction_id",
        "timestamp_field": "_timestamp",
        "fallback_time_field": "transaction_timestamp",
        "body_contract": TRANSACTION_BODY,
    },
    "predictions": {
        "table": "raw_bnpl_prediction_logs",
        "event_column": "raw",
        "id_field": "prediction_id",
        "timestamp_field": "prediction_timestamp",
        "fallback_time_field": None,
        "body_contract": None,
    },
}

# `FieldType::from_bigquery`: BigQuery's names and legacy aliases.
TYPES = {
    "STRING": "STRING",
    "INT64": "INT64",
    "INTEGER": "INT64",
    "FLOAT64": "FLOAT64",
    "FLOAT": "FLOAT64",
    "BOOL": "BOOL",
    "BOOLEAN": "BOOL",
    "TIMESTAMP": "TIMESTAMP",
    "DATE": "DATE",
    "JSON": "JSON",
}


def _ascii_upper(text: str) -> str:
    # Rust's to_ascii_uppercase / eq_ignore_ascii_case: str.upper() would
    # also fold non-ASCII letters ("\u017ftring" -> "STRING").
    return text.translate(_UPPER)


_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


class SchemaError(Exception):
    """schemas/ cannot be turned into rules (the Rust build refuses it too)."""


def _read(path: Path) -> List[Dict[str, Any]]:
    """`schema::read`: entries with name, type and an optional mode."""
    file = f"schemas/{path.name}"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SchemaError(f"{file}: {e}") from e
    if not isinstance(entries, list):
        raise SchemaError(f"{file}: expected a list of fields")
    fields = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise SchemaError(f"{file}: expected a list of fields")
        name, type_name = entry.get("name"), entry.get("type")
        if not isinstance(name, str) or not isinstance(type_name, str):
            raise SchemaError(f"{file}: every field needs a string name and type")
        mode = entry.get("mode")
        if mode is None:
            mode = "NULLABLE"
        if not isinstance(mode, str):
            raise SchemaError(f"{file}: {name} has a mode that is not a string")
        if _ascii_upper(mode) == "REPEATED":
            raise SchemaError(f"{file}: {name} is REPEATED, which the rules do not support")
        field_type = TYPES.get(_ascii_upper(type_name))
        if field_type is None:
            raise SchemaError(
                f"{file}: {name} has type {type_name}, which the rules do not support"
            )
        # Any mode but REQUIRED (NULLABLE, or one BigQuery would refuse) is optional.
        required = _ascii_upper(mode) == "REQUIRED"
        fields.append({"name": name, "type": field_type, "required": required})
    return fields


def build(schemas: Path = SCHEMAS) -> Dict[str, Any]:
    """The rules of every kind, as `EventSchema::build` derives them."""
    kinds: Dict[str, Any] = {}
    for kind, fixed in KINDS.items():
        table = str(fixed["table"])
        event_column = str(fixed["event_column"])
        columns = _read(schemas / f"{table}.json")
        own = (event_column, INGESTION_COLUMN)
        fields = [dict(c) for c in columns if c["name"] not in own]
        if fixed["body_contract"]:
            fields.extend(_read(schemas / str(fixed["body_contract"])))
        for name, wanted in (
            (fixed["id_field"], "STRING"),
            (fixed["timestamp_field"], "TIMESTAMP"),
        ):
            if not any(f["name"] == name and f["type"] == wanted and f["required"] for f in fields):
                raise SchemaError(f"schemas/: {name} must be a REQUIRED {wanted} field of {kind}")
        for name in own:
            if not any(c["name"] == name for c in columns):
                raise SchemaError(f"schemas/: the {kind} table has no column {name}")
        table_columns = []
        for column in columns:
            if column["name"] == event_column:
                table_columns.append({"name": column["name"], "type": "JSON", "source": "event"})
            elif column["name"] == INGESTION_COLUMN:
                table_columns.append(
                    {"name": column["name"], "type": "TIMESTAMP", "source": "ingestion"}
                )
            else:
                index = next((i for i, f in enumerate(fields) if f["name"] == column["name"]), None)
                if index is None:
                    raise SchemaError(f"schemas/: column {column['name']} has no event field")
                table_columns.append(
                    {"name": column["name"], "type": fields[index]["type"], "source": "field"}
                )
        kinds[kind] = {
            "table": table,
            "event_column": event_column,
            "id_field": fixed["id_field"],
            "timestamp_field": fixed["timestamp_field"],
            "fallback_time_field": fixed["fallback_time_field"],
            # Checked in this order, the order reasons are found in.
            "fields": fields,
            "columns": table_columns,
        }
    return {
        "generated": (
            "by clients/python/tools/gen_rules.py from schemas/; do not edit, "
            "run the generator after changing schemas/"
        ),
        "kinds": kinds,
    }


def render(schemas: Path = SCHEMAS) -> str:
    """The exact text of `_rules.json` (stable, so it can be compared)."""
    return json.dumps(build(schemas), indent=2, ensure_ascii=False) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help="the schemas/ directory")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the _rules.json to write")
    args = parser.parse_args(argv)
    try:
        text = render(args.schemas)
    except SchemaError as e:
        print(f"gen_rules: {e}", file=sys.stderr)
        return 2
    if args.check:
        try:
            current = args.output.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != text:
            print(
                f"{args.output} is out of date with {args.schemas}: "
                "run python clients/python/tools/gen_rules.py",
                file=sys.stderr,
            )
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
