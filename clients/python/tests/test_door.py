"""The Python door against the shared case corpus (`schemas/door_cases.json`,
the one source of truth of every implementation of the rules), the generated
rules against `schemas/`, and properties of what Python producers send."""

from __future__ import annotations

import importlib.util
import json
import pickle
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, List

import pytest

from flit_cache import door
from flit_cache.door import PREDICTIONS, TRANSACTIONS, Accepted, Rejected, accept, check_id

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CORPUS_PATH = HERE / "../../../schemas/door_cases.json"
CORPUS = json.loads(CORPUS_PATH.read_text(encoding="utf-8"))
SETTINGS = CORPUS["settings"]
UTC = timezone.utc
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _corpus_rules() -> Dict[str, Any]:
    return {
        "now": _utc(SETTINGS["now"]),
        "arrival": _utc(SETTINGS["arrival"]),
        "max_event_bytes": SETTINGS["max_event_bytes"],
        "earliest": _utc(SETTINGS["earliest_event_time"]),
        "max_ahead": timedelta(seconds=SETTINGS["max_event_ahead_seconds"]),
    }


def _data(case: Dict[str, Any]) -> bytes:
    if case.get("data") is not None:
        return case["data"].encode("utf-8")
    return bytes.fromhex(case["data_hex"])


# --- (1) the corpus ----------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS["cases"], ids=[c["name"] for c in CORPUS["cases"]])
def test_corpus_verdict(case: Dict[str, Any]) -> None:
    # The clock cases too: here the clock is the corpus's `now`.
    try:
        verdict: Any = accept(case["kind"], _data(case), **_corpus_rules())
    except Rejected as e:
        verdict = e
    if case["verdict"] == "accept":
        assert isinstance(verdict, Accepted), f"rejected as {verdict.code}: {verdict}"
        if case.get("record") is not None:
            assert verdict.payload == case["record"]
        assert "\n" not in verdict.payload and "\r" not in verdict.payload
        assert verdict.stamped == case.get("stamped", False)
        if case.get("event_time"):
            assert verdict.event_time == _utc(case["event_time"])
        assert verdict.event_time.tzinfo is not None
        assert verdict.event_time.utcoffset() == timedelta(0)
    else:
        assert isinstance(verdict, Rejected), f"accepted as {verdict.payload}"
        assert verdict.code == case["code"], str(verdict)
        if case.get("field") is not None:
            assert verdict.field == case["field"], str(verdict)


def test_corpus_covers_every_rule() -> None:
    assert len(CORPUS["cases"]) >= 60
    codes = {c.get("code") for c in CORPUS["cases"]}
    for code in door.CODES:
        if code not in ("missing_data", "missing_field"):
            assert code in codes, code


def test_the_same_event_twice_gives_the_same_record() -> None:
    # Producers retry: the same bytes at the same clock are the same record.
    for case in CORPUS["cases"]:
        if case["verdict"] == "accept":
            first = accept(case["kind"], _data(case), **_corpus_rules())
            again = accept(case["kind"], first.payload, **_corpus_rules())
            assert again.payload == first.payload, case["name"]
            assert again.id == first.id and again.event_time == first.event_time
            assert not again.stamped


# --- (2) generated rules -----------------------------------------------------


def _gen_rules() -> Any:
    spec = importlib.util.spec_from_file_location("gen_rules", HERE.parent / "tools/gen_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rules_json_is_what_the_generator_makes_from_schemas() -> None:
    committed = (HERE.parent / "flit_cache/_rules.json").read_text(encoding="utf-8")
    assert committed == _gen_rules().render(REPO / "schemas"), (
        "flit_cache/_rules.json is stale: run python clients/python/tools/gen_rules.py"
    )


def test_generator_check_mode(tmp_path: Path) -> None:
    script = str(HERE.parent / "tools/gen_rules.py")
    ok = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "_rules.json"
    stale.write_text("{}\n", encoding="utf-8")
    run = [sys.executable, script, "--check", "--output", str(stale)]
    bad = subprocess.run(run, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "gen_rules.py" in bad.stderr


def test_generator_refuses_what_the_rust_build_refuses(tmp_path: Path) -> None:
    gen = _gen_rules()
    for name in ("raw_bnpl_txs_json.json", "raw_bnpl_txs_json.json_body.json"):
        (tmp_path / name).write_text((REPO / "schemas" / name).read_text())
    predictions = json.loads((REPO / "schemas/raw_bnpl_prediction_logs.json").read_text())
    predictions[1]["type"] = "GEOGRAPHY"
    (tmp_path / "raw_bnpl_prediction_logs.json").write_text(json.dumps(predictions))
    with pytest.raises(gen.SchemaError, match="GEOGRAPHY"):
        gen.build(tmp_path)
    predictions[1]["type"] = "STRING"
    predictions[1]["mode"] = "REPEATED"
    (tmp_path / "raw_bnpl_prediction_logs.json").write_text(json.dumps(predictions))
    with pytest.raises(gen.SchemaError, match="REPEATED"):
        gen.build(tmp_path)


def test_rules_are_the_rust_schema() -> None:
    rules = json.loads((HERE.parent / "flit_cache/_rules.json").read_text())["kinds"]
    names = [f["name"] for f in rules[PREDICTIONS]["fields"]]
    assert names == [
        "prediction_id",
        "transaction_id",
        "customer_id",
        "model_predictions",
        "selected_model",
        "selected_prediction",
        "business_decision",
        "risk_level",
        "processing_time_ms",
        "prediction_timestamp",
    ]
    assert len(rules[PREDICTIONS]["columns"]) == 12
    amount = [f for f in rules[TRANSACTIONS]["fields"] if f["name"] == "amount"]
    assert amount == [{"name": "amount", "type": "FLOAT64", "required": False}]
    assert door.id_field(TRANSACTIONS) == "transaction_id"
    assert door.timestamp_field(PREDICTIONS) == "prediction_timestamp"


# --- (3) what Python producers send ------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 4 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.randint(-(2**63), 2**64)
    if pick == 3:
        return rng.choice([0.0, -0.0, 1e-7, 2.5, 1e300, -123.456, rng.uniform(-1e6, 1e6)])
    if pick in (4, 5):
        alphabet = 'ab "\\\n\t\u2028\u00e9\U0001f600/\x00\x1f {}[],:'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if pick in (6, 7):
        return {
            f"k{rng.randrange(1000)} {i}": _random_value(rng, depth + 1)
            for i in range(rng.randrange(5))
        }
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]


def test_indented_json_dumps_is_the_compact_record() -> None:
    rng = random.Random(20261123)
    for _ in range(300):
        event: Dict[str, Any] = {"prediction_id": f"p_{rng.randrange(10**6)}"}
        for i in range(rng.randrange(6)):
            event[f"x_{i}"] = _random_value(rng)
        event["prediction_timestamp"] = "2026-11-20T14:30:00Z"
        for ascii_only in (True, False):
            compact = json.dumps(event, separators=(",", ":"), ensure_ascii=ascii_only)
            for pretty in (
                json.dumps(event, indent=2, ensure_ascii=ascii_only),
                json.dumps(event, indent="\t", ensure_ascii=ascii_only),
                json.dumps(event, ensure_ascii=ascii_only),
            ):
                assert door.minify(pretty.encode()) == compact.encode()
                record = accept(PREDICTIONS, pretty, now=NOW)
                assert record.payload == compact
                assert not record.stamped
                assert json.loads(record.payload) == event


def test_datetime_isoformat_without_offset_is_utc() -> None:
    naive = datetime(2026, 11, 20, 14, 30, 0, 123456)
    aware = naive.replace(tzinfo=UTC)
    whole = aware.replace(microsecond=0)
    for written, expected in (
        (naive.isoformat(), aware),  # datetime.utcnow().isoformat()
        (naive.replace(microsecond=0).isoformat(), whole),
        (str(naive), aware),  # a space for the T
        (aware.isoformat(), aware),  # +00:00
        (aware.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(), aware),
        (aware.astimezone(timezone(timedelta(hours=-8))).isoformat(" "), aware),
        (naive.isoformat(timespec="milliseconds") + "Z", aware.replace(microsecond=123000)),
    ):
        event = {"prediction_id": "p_iso", "prediction_timestamp": written}
        record = accept(PREDICTIONS, json.dumps(event), now=NOW)
        assert record.event_time == expected, written
        assert record.event_time.tzinfo is not None
        assert record.payload == json.dumps(event, separators=(",", ":")), "kept as written"
    # A naive clock is read as UTC too.
    record = accept(PREDICTIONS, b'{"prediction_id":"p"}', now=datetime(2026, 11, 23, 12))
    assert record.payload.startswith('{"prediction_timestamp":"2026-11-23T12:00:00.000Z",')


def test_a_seventh_fractional_digit_or_a_leap_second_is_refused() -> None:
    for written in ("2026-11-20T14:30:00.1234567", "2026-11-20T23:59:60Z", "2026-11-20T14:30"):
        with pytest.raises(Rejected) as e:
            accept(PREDICTIONS, json.dumps({"prediction_id": "p", "prediction_timestamp": written}))
        assert e.value.code == "invalid_timestamp"
        assert e.value.field == "prediction_timestamp"


def test_numbers_as_strings_where_the_column_is_float() -> None:
    # As in Rust: a string holding exactly one JSON number counts (and stays
    # a string in the record; the row casts it); anything else is refused.
    for amount in ("299.99", "0", "-1.5e3", str(Decimal("10.10")), "23"):
        event = {"transaction_id": "t", "amount": amount, "_timestamp": "2026-11-20 14:30:00"}
        record = accept(TRANSACTIONS, json.dumps(event), now=NOW)
        assert json.loads(record.payload)["amount"] == amount
    not_numbers = ("NaN", "inf", "Infinity", "1e999", " 1", "1 ", "+1", "01", ".5", "1.", "0x1", "")
    for amount in not_numbers:
        event = {"transaction_id": "t", "amount": amount}
        with pytest.raises(Rejected) as e:
            accept(TRANSACTIONS, json.dumps(event), now=NOW)
        assert (e.value.code, e.value.field) == ("invalid_type", "amount"), amount
    for amount in (True, {"v": 1}, [1]):
        with pytest.raises(Rejected) as e:
            accept(TRANSACTIONS, json.dumps({"transaction_id": "t", "amount": amount}), now=NOW)
        assert e.value.code == "invalid_type"
    # json.dumps writes NaN and Infinity, which are not JSON.
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(Rejected) as e:
            accept(TRANSACTIONS, json.dumps({"transaction_id": "t", "amount": value}), now=NOW)
        assert e.value.code == "invalid_json"


def test_numbers_at_the_edge_of_a_double() -> None:
    def verdict(number: str) -> str:
        text = '{"prediction_id":"p","x":' + number + "}"
        try:
            accept(PREDICTIONS, text, now=NOW)
        except Rejected as e:
            return e.code
        return "accept"

    assert verdict("1.7976931348623157e308") == "accept"
    assert verdict("1e308") == "accept"
    # serde_json (without float_roundtrip) is not correctly rounded here: it
    # overflows where a correctly rounded reading gives the largest double.
    # Followed from its source (de.rs f64_from_parts); worth a corpus case.
    assert float("1.7976931348623158e308") < float("inf")
    assert verdict("1.7976931348623158e308") == "invalid_json"
    assert verdict("1e309") == "invalid_json"
    assert verdict("-1e400") == "invalid_json"
    assert verdict("1e-400") == "accept"  # underflows to zero, as in serde_json
    assert verdict("0e99999999999") == "accept"
    assert verdict("1e99999999999") == "invalid_json"
    assert verdict("1" * 400) == "invalid_json"
    assert verdict("1" * 300) == "accept"
    assert verdict("123456789012345678901234567890") == "accept"


def test_a_huge_event_is_too_large() -> None:
    event = {"prediction_id": "p", "pad": "x" * door.MAX_EVENT_BYTES}
    with pytest.raises(Rejected) as e:
        accept(PREDICTIONS, json.dumps(event), now=NOW)
    assert e.value.code == "too_large" and e.value.field is None
    assert f"over the limit of {door.MAX_EVENT_BYTES} bytes" in str(e.value)
    # The limit is in UTF-8 bytes, not characters.
    event = {"prediction_id": "p", "pad": "\u00e9" * 600, "prediction_timestamp": "2026-11-20"}
    text = json.dumps(event, ensure_ascii=False)
    assert len(text) < 1024 < len(text.encode())
    with pytest.raises(Rejected) as e:
        accept(PREDICTIONS, text, now=NOW, max_event_bytes=1024)
    assert e.value.code == "too_large"
    # Just under the default limit is fine, and fast enough.
    event = {"prediction_id": "p", "pad": "x" * (door.MAX_EVENT_BYTES - 100)}
    assert accept(PREDICTIONS, json.dumps(event), now=NOW).stamped


def test_non_utf8_bytes_are_invalid_json() -> None:
    for data in (
        b'{"prediction_id":"\xff"}',
        '{"prediction_id":"caf\u00e9"}'.encode("latin-1"),
        b'{"prediction_id":"\xe2\x82"}',
        b'{"prediction_id":"p","x":"\xed\xa0\x80"}',  # a UTF-8-encoded surrogate
        b'{"prediction_id":"p"}\xc0',
        '{"prediction_id":"p\ud800"}',  # a lone surrogate in a str
    ):
        with pytest.raises(Rejected) as e:
            accept(PREDICTIONS, data, now=NOW)
        assert e.value.code == "invalid_json", data
        assert "not UTF-8" in str(e.value)


def test_what_serde_json_refuses_and_in_which_order() -> None:
    def code(text: str) -> str:
        try:
            accept(PREDICTIONS, text, now=NOW)
        except Rejected as e:
            return e.code
        return "accept"

    assert code('{"prediction_id":"p","x":"\\ud800"}') == "invalid_json"
    assert code('{"prediction_id":"p","x":"\\udc00\\ud800"}') == "invalid_json"
    assert code('{"prediction_id":"p","x":"\\ud83d\\ude00"}') == "accept"
    assert code('{"prediction_id":"p","x":"\\u0000"}') == "accept"
    assert code('{"prediction_id":"p","x":"\\q"}') == "invalid_json"
    assert code('{"prediction_id":"p","x":[1,]}') == "invalid_json"
    assert code('{"prediction_id":"p",}') == "invalid_json"
    assert code("\ufeff" + '{"prediction_id":"p"}') == "invalid_json"
    assert code("") == "invalid_json"
    assert code("  \n ") == "invalid_json"
    assert code('{"prediction_id":"p","x":NaN}') == "invalid_json"
    # A repeated key is seen when read, before any later syntax error, and a
    # repeat spelled with an escape is still a repeat.
    assert code('{"prediction_id":"a","prediction_id"') == "duplicate_key"
    assert code('{"prediction_id":"p","k":1,"\\u006b":2}') == "duplicate_key"
    assert code('{"prediction_id":"p","x":1e999,"x":1}') == "invalid_json"
    # Depth counts every container, whatever the top level is.
    assert code("[" * 65) == "too_deep"
    assert code("[" * 64 + "]" * 64) == "not_an_object"
    assert code("[" * 200 + "]" * 200) == "too_deep"
    assert code('{"prediction_id":"p","x":' + "[" * 100_000) == "too_deep"
    def objects(depth: int) -> str:
        return '{"prediction_id":"p","a":' + '{"k":' * (depth - 1) + "1" + "}" * depth

    assert code(objects(64)) == "accept"
    assert code(objects(65)) == "too_deep"


def test_an_event_keeps_its_text_and_order() -> None:
    text = '{ "b": 1.50e+3, "prediction_id": "p", "a": "x\\" y\\n", "c": [ 1 , {"k" : null} ] }'
    record = accept(PREDICTIONS, text, now=NOW)
    assert record.payload == (
        '{"prediction_timestamp":"2026-11-23T12:00:00.000Z",'
        '"b":1.50e+3,"prediction_id":"p","a":"x\\" y\\n","c":[1,{"k":null}]}'
    )
    assert record.event_time == NOW and record.stamped and record.id == "p"
    # The stamp is the arrival time in milliseconds, truncated.
    arrival = datetime(2026, 11, 23, 11, 59, 59, 999999, tzinfo=UTC)
    text = '{"prediction_id":"p","prediction_timestamp":null}'
    record = accept(PREDICTIONS, text, now=NOW, arrival=arrival)
    assert record.payload == text.replace("null", '"2026-11-23T11:59:59.999Z"')
    assert record.event_time == arrival


def test_the_window_defaults_follow_the_rust_defaults() -> None:
    def at(when: str) -> bytes:
        return json.dumps({"prediction_id": "p", "prediction_timestamp": when}).encode()

    assert accept(PREDICTIONS, at("2026-11-24T12:00:00Z"), now=NOW)
    with pytest.raises(Rejected, match="outside the accepted window"):
        accept(PREDICTIONS, at("2026-11-24T12:00:00.000001Z"), now=NOW)
    assert accept(PREDICTIONS, at("1960-01-01T00:00:00Z"), now=NOW)
    with pytest.raises(Rejected) as e:
        accept(PREDICTIONS, at("1959-12-31T23:59:59.999999Z"), now=NOW)
    assert "1960-01-01T00:00:00.000000Z to 2026-11-24T12:00:00.000000Z" in str(e.value)
    # Configured like FLIT_EARLIEST_EVENT_TIME / FLIT_MAX_EVENT_AHEAD_SECONDS.
    later = dict(now=NOW, earliest=datetime(2000, 1, 1), max_ahead=timedelta(0))
    with pytest.raises(Rejected):
        accept(PREDICTIONS, at("1999-12-31T23:59:59Z"), **later)
    with pytest.raises(Rejected):
        accept(PREDICTIONS, at("2026-11-23T12:00:01Z"), **later)
    # A huge max_ahead stops at BigQuery's last instant.
    last = at("9999-12-31T23:59:59.999999Z")
    assert accept(PREDICTIONS, last, now=NOW, max_ahead=timedelta(days=10**8))
    # Without a clock given, the current one is used.
    current = datetime.now(UTC)
    assert accept(PREDICTIONS, at(current.isoformat())).event_time == current


def test_ids() -> None:
    check_id(PREDICTIONS, "pred_abc123")
    check_id(TRANSACTIONS, "\u00e9" * 128)
    check_id(TRANSACTIONS, "zero\u200bwidth")  # not White_Space, not a control
    for bad, reason in (
        ("", "empty_id"),
        ("x" * 257, "id_too_long"),
        ("\u00e9" * 129, "id_too_long"),
        ("a b", "id_bad_character"),
        ("a\u00a0b", "id_bad_character"),
        ("a\u2028b", "id_bad_character"),
        ("a\x85b", "id_bad_character"),
        ("a\x7fb", "id_bad_character"),
        ("a\x00", "id_bad_character"),
        ("a\u3000", "id_bad_character"),
    ):
        with pytest.raises(Rejected) as e:
            check_id(TRANSACTIONS, bad)
        assert (e.value.code, e.value.field) == (reason, "transaction_id"), repr(bad)
    with pytest.raises(Rejected) as e:
        check_id(PREDICTIONS, 42)  # type: ignore[arg-type]
    assert e.value.code == "id_not_string"
    with pytest.raises(ValueError) as unknown:
        check_id("tx", "a")
    assert not isinstance(unknown.value, Rejected)


def test_unknown_kind_and_wrong_types() -> None:
    with pytest.raises(ValueError) as e:
        accept("prediction", b"{}")
    assert not isinstance(e.value, Rejected)
    with pytest.raises(TypeError):
        accept(PREDICTIONS, {"prediction_id": "p"})  # type: ignore[arg-type]
    assert accept(PREDICTIONS, bytearray(b'{"prediction_id":"p"}'), now=NOW).id == "p"


def test_rejected_is_a_value_error_that_keeps_its_reason() -> None:
    with pytest.raises(ValueError) as e:
        accept(PREDICTIONS, b'{"prediction_id":"p","risk_level":3}')
    rejected = e.value
    assert isinstance(rejected, Rejected)
    assert str(rejected) == "`risk_level` is a number (3), the column is STRING (a JSON string)"
    copy = pickle.loads(pickle.dumps(rejected))
    assert (copy.code, copy.field, str(copy)) == (rejected.code, rejected.field, str(rejected))


def _mutations(rng: random.Random, seeds: List[bytes], count: int) -> List[bytes]:
    out = []
    pieces = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"null", b" ", b"\n"]
    pieces += [b"1e400", b"\xff", b"-", b"0", b'"prediction_id":"a",', b'"transaction_id":"a",']
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data) + 1)
            action = rng.randrange(4)
            if action == 3 and data[:1] == b"{":
                data[1:1] = rng.choice(pieces[-2:])  # a field the event may repeat
            elif action == 0 and data:
                del data[at : at + rng.randrange(1, 4)]
            elif action == 1:
                data[at:at] = rng.choice(pieces)
            elif data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
        out.append(bytes(data))
    return out


def test_random_bytes_get_a_verdict_never_an_exception() -> None:
    rng = random.Random(7)
    seeds = [_data(c) for c in CORPUS["cases"] if c["verdict"] == "accept"]
    inputs = [bytes(rng.randrange(256) for _ in range(rng.randrange(300))) for _ in range(1500)]
    inputs += [
        bytes(rng.choice(b'{}[]",:\\ 0123456789.eE-+tfnrul\n"ab') for _ in range(rng.randrange(80)))
        for _ in range(1500)
    ]
    inputs += _mutations(rng, seeds, 3000)
    verdicts = set()
    for data in inputs:
        for kind in (TRANSACTIONS, PREDICTIONS):
            try:
                record = accept(kind, data, **_corpus_rules())
            except Rejected as e:
                assert e.code in door.CODES
                verdicts.add(e.code)
                continue
            verdicts.add("accept")
            assert "\n" not in record.payload
            assert isinstance(json.loads(record.payload), dict)
            assert len(record.payload.encode()) <= SETTINGS["max_event_bytes"]
            assert accept(kind, record.payload, **_corpus_rules()).payload == record.payload
    assert {"accept", "invalid_json", "not_an_object", "duplicate_key", "invalid_type"} <= verdicts


# --- ports of the Rust unit tests of time.rs, json_text.rs and check.rs -----


def _ts(text: str) -> Any:
    at = door._parse_timestamp(text)
    return None if at is None else door._format_us(at, 6)


def test_reads_what_python_and_javascript_write() -> None:
    for text, expected in (
        ("2026-11-20T14:30:00.123456", "2026-11-20T14:30:00.123456Z"),
        ("2026-11-20T14:30:00", "2026-11-20T14:30:00.000000Z"),
        ("2026-11-20 14:30:00", "2026-11-20T14:30:00.000000Z"),
        ("2026-11-20T14:30:00+00:00", "2026-11-20T14:30:00.000000Z"),
        ("2026-11-20T14:30:00.123Z", "2026-11-20T14:30:00.123000Z"),
        ("2026-11-20T23:30:00-02:00", "2026-11-21T01:30:00.000000Z"),
        ("2026-11-20T14:30:00+05", "2026-11-20T09:30:00.000000Z"),
        ("2026-1-2T3:4:5z", "2026-01-02T03:04:05.000000Z"),
        ("2026-11-20 14:30:00.5-01:00", "2026-11-20T15:30:00.500000Z"),
        ("2024-02-29t00:00:00+14:59", "2024-02-28T09:01:00.000000Z"),
    ):
        assert _ts(text) == expected, text


def test_refuses_what_bigquery_would_not_read() -> None:
    for text in (
        "", "yesterday", "2026-11-20", "2026-11-20T14:30", "2026-11-20T14:30:00.1234567",
        "2026-11-20T14:30:00.", "2026-02-30T00:00:00Z", "2026-11-20T24:00:00Z",
        "2026-11-20T23:59:60Z", "2026-11-20T14:30:00+15:00", "2026-11-20T14:30:00 +01:00",
        "2026-11-20T14:30:00Z ", " 2026-11-20T14:30:00Z", "26-11-20T14:30:00Z",
        "20261120T143000Z", "2026-11-20T14:30:00UTC", "1700000000", "2026-11-20T14:30:00+01:0",
        "2026-11-20T14:30:00+01:60", "\uff12026-11-20T14:30:00Z", "2026-11-20T14:30:00\uff10",
        "2025-02-29T00:00:00Z", "2026-11-20T14:30:00+0530",
    ):
        assert door._parse_timestamp(text) is None, repr(text)


def test_years_beyond_bigquery_parse_but_fall_outside_its_range() -> None:
    zero = door._parse_timestamp("0000-06-01T00:00:00Z")
    assert zero is not None and zero < door._FIRST_US
    past_end = door._parse_timestamp("9999-12-31T23:00:00-02:00")
    assert past_end is not None and past_end > door._LAST_US
    assert door._parse_timestamp("9999-12-31T23:59:59.999999Z") == door._LAST_US
    assert door._parse_timestamp("0000-02-29T00:00:00Z") is not None  # year 0 is a leap year


def test_minify_keeps_strings_and_separating_spaces() -> None:
    pretty = b'{\n  "a b": "x\\" y\\n",\n  "n": 1.50e+3 ,\n\t"o": { "k" : [ 1 , 2 ] }\r\n}'
    assert door.minify(pretty) == b'{"a b":"x\\" y\\n","n":1.50e+3,"o":{"k":[1,2]}}'
    assert door.minify(b'{"a":"\\\\"} ') == b'{"a":"\\\\"}'
    assert door.minify(b'{"a":1 2}') == b'{"a":1 2}'
    assert door.minify(b"[true  false]") == b"[true false]"
    assert door.minify(b'"a  \\') == b'"a  \\'
    assert door.minify(b"  ") == b""


def test_json_number_grammar() -> None:
    for ok in ("0", "-0", "1.5", "1e-05", "12E+3", "0.234", "-12.50"):
        assert door._JSON_NUMBER.fullmatch(ok), ok
    for bad in ("", "-", "01", "1.", ".5", "+1", " 1", "1 ", "0x10", "NaN", "1e", "--1", "\uff11"):
        assert not door._JSON_NUMBER.fullmatch(bad), repr(bad)


# --- ports of the Rust property tests ------------------------------------------


def _spaced(value: Any, ws: Any) -> str:
    """A JSON value printed with whitespace from `ws` between its tokens."""
    if isinstance(value, dict):
        items = [
            next(ws) + json.dumps(k) + next(ws) + ":" + next(ws) + _spaced(v, ws) + next(ws)
            for k, v in value.items()
        ]
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(next(ws) + _spaced(v, ws) + next(ws) for v in value) + "]"
    return json.dumps(value)


def test_whitespace_never_changes_the_record() -> None:
    rng = random.Random(64)
    for _ in range(300):
        event: Dict[str, Any] = {"prediction_id": "p_prop"}
        for i in range(rng.randrange(6)):
            event[f"x_{i}"] = _random_value(rng)
        event["prediction_timestamp"] = "2026-11-20 14:30:00"
        gaps = ["".join(rng.choice(" \t\r\n") for _ in range(rng.randrange(4))) for _ in range(40)]
        ws = iter(gaps * 1000)
        compact = json.dumps(event, separators=(",", ":"))
        a = accept(PREDICTIONS, compact, now=NOW)
        b = accept(PREDICTIONS, _spaced(event, ws), now=NOW)
        assert a.payload == compact, "compact JSON is kept byte for byte"
        assert b.payload == a.payload, "spacing does not make another record"


def test_numbers_and_key_order_are_kept_as_written() -> None:
    rng = random.Random(1234)

    def number() -> str:
        text = rng.choice(["", "-"]) + rng.choice(["0", str(rng.randrange(1, 10**13))])
        if rng.random() < 0.5:
            text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 9)))
        if rng.random() < 0.5:
            text += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randrange(100))
        return text

    for _ in range(500):
        numbers = [number() for _ in range(rng.randrange(1, 8))]
        ws = rng.choice(["", " ", "\n", " \n"])
        fields = [f'"k{len(numbers) - i}":{ws}{n}' for i, n in enumerate(numbers)]
        text = (
            '{"prediction_id":"p",' + ws + f",{ws}".join(fields)
            + ',"prediction_timestamp":"2026-11-20T14:30:00Z"}'
        )
        expected = (
            '{"prediction_id":"p",'
            + ",".join(f'"k{len(numbers) - i}":{n}' for i, n in enumerate(numbers))
            + ',"prediction_timestamp":"2026-11-20T14:30:00Z"}'
        )
        try:
            assert accept(PREDICTIONS, text, now=NOW).payload == expected
        except Rejected as e:
            # Only a number beyond a double is refused.
            assert e.code == "invalid_json" and "out of range" in str(e)


def test_types_no_schema_uses_yet() -> None:
    # DATE, INT64 and BOOL columns have rules too (check.rs column_value).
    bounds = (door._to_us(door.EARLIEST_EVENT_TIME), door._to_us(NOW + door.MAX_EVENT_AHEAD))

    def takes(kind: str, raw: str) -> bool:
        try:
            door._check_value(door._Field("c", kind, False), raw, bounds)
        except Rejected as e:
            assert (e.code, e.field) == ("invalid_type", "c")
            return False
        return True

    for raw in ('"2026-11-20"', '"2026-11-24"', '"1960-01-01"', '"+2026-1-20"', '" 2026-1-20"'):
        assert takes("DATE", raw), raw
    for raw in ('"2026-11-25"', '"1959-12-31"', '"2026-02-30"', '"2026/11/20"', '"2026-1-2"', "20"):
        assert not takes("DATE", raw), raw
    for raw in ("42", '"42"', "-0", str(2**63 - 1), str(-(2**63))):
        assert takes("INT64", raw), raw
    for raw in (str(2**63), '"4.0"', "1e3", '"1" ', '"0x1"', "true", "9" * 5000):
        assert not takes("INT64", raw), raw
    assert takes("BOOL", "true") and takes("BOOL", "false")
    assert not takes("BOOL", '"true"') and not takes("BOOL", "1")
