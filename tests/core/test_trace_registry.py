import json
import warnings

import pytest

from mosaic.core.errors import MosaicError, RegistryError, TornLineWarning, TraceError
from mosaic.core.registry import Registry
from mosaic.core.trace import (
    AggregationRecord,
    LoadRecord,
    RequestRecord,
    TraceWriter,
    read_jsonl,
    read_trace,
    repair_torn_tail,
)


def test_trace_roundtrip_and_flush_per_record(tmp_path):
    path = tmp_path / "t.jsonl"
    recs = [
        LoadRecord("expert", 0, "a", 0.0, 30.0),
        RequestRecord("expert", 0, 0, "a", 0, 30.0, 31.5, 100, 20, "B", True),
        AggregationRecord(0, 1.0, True, "B", True),
    ]
    w = TraceWriter(path, meta={"scheduler": "x"})
    w.write(recs[0])
    # flushed as written: readable before close
    assert [json.loads(line)["type"] for line in path.read_text().splitlines()] == ["meta", "load"]
    w.extend(recs[1:])
    w.close()
    assert list(read_trace(path)) == recs


def _torn_trace(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path, meta={"scheduler": "x"}) as w:
        w.write(LoadRecord("expert", 1, "b", 0.0, 1.0))
        w.write(RequestRecord("expert", 0, 0, "b", 1, 1.0, 2.0, 10, 5))
    with path.open("a") as fh:
        fh.write('{"type": "request", "stage": "exp')
    return path


def test_torn_last_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path):
    path = _torn_trace(tmp_path)
    with pytest.warns(TornLineWarning, match=rf"{path}: line 4 is cut short"):
        assert len(list(read_trace(path))) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", TornLineWarning)  # the CLI's --strict
        with pytest.raises(TornLineWarning, match="line 4"):
            list(read_trace(path))


def test_a_bad_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"type": "load", "stage": "expert", "worker": 0, "expert": "a", "start": 0, "end": 1}\n'
                    '{not json\n[1, 2]\n')  # fmt: skip
    with pytest.raises(TraceError, match=rf"{path}: line 2 is not valid JSON"):
        list(read_trace(path))
    path.write_text('[1, 2]\n{"type": "meta"}\n')
    with pytest.raises(TraceError, match="line 1 is not a JSON object"):
        list(read_jsonl(path))
    path.write_text('{"type": "load", "stage": "expert"}\n')
    with pytest.raises(TraceError, match="line 1 is not a trace record"):
        list(read_trace(path))


def test_line_separators_inside_json_strings_do_not_split_a_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b\x1cc\x0cd"}, ensure_ascii=False) + "\r\n{}\n", encoding="utf-8")
    assert list(read_jsonl(path)) == [{"text": "a\u2028b\x1cc\x0cd"}, {}]


def test_resume_cuts_the_torn_line_and_writes_each_request_once(tmp_path):
    path = _torn_trace(tmp_path)
    again = RequestRecord("expert", 0, 0, "b", 0, 5.0, 6.0, 10, 5)  # finished before: not written again
    new = RequestRecord("expert", 1, 1, "b", 0, 6.0, 7.0, 10, 5)
    with pytest.warns(TornLineWarning, match="line 4"), TraceWriter(path, {"resumed": True}, resume=True) as w:
        assert [type(r) for r in w.prior] == [LoadRecord, RequestRecord]
        w.extend([LoadRecord("expert", 0, "b", 5.0, 5.5), again, new])
        assert w.records == [LoadRecord("expert", 0, "b", 5.0, 5.5), new]
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # every line is valid JSON again
    assert [d["type"] for d in lines] == ["meta", "load", "request", "meta", "load", "request"]
    assert [d["request_id"] for d in lines if d["type"] == "request"] == [0, 1]


def test_resume_adds_a_missing_newline_and_needs_an_existing_trace(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"type": "meta"}')  # complete, but the newline was never written
    assert repair_torn_tail(path) is False and path.read_text() == '{"type": "meta"}\n'
    with pytest.raises(TraceError, match="does not exist"):
        TraceWriter(tmp_path / "none.jsonl", resume=True)


def test_unknown_record_type(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"type": "bogus"}\n')
    with pytest.raises(MosaicError, match="unknown type 'bogus'"):
        list(read_trace(path))


def test_registry_lists_valid_names_on_unknown():
    reg: Registry[int] = Registry("thing")
    reg.register("b", help="bee")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1 and list(reg) == ["a", "b"] and reg.describe()["b"] == "bee"
    with pytest.raises(RegistryError, match="unknown thing 'c'; valid: a, b"):
        reg.get("c")
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a")(3)


def test_fast_request_record_equals_the_dataclass_constructor():
    import inspect
    from dataclasses import fields

    from mosaic.core.trace import RequestRecord, request_record

    assert list(inspect.signature(request_record).parameters) == [f.name for f in fields(RequestRecord)]
    full = ("expert", 3, 1, "e", 0, 0.5, 2.0, 40, 7, "B", False, "text")
    assert request_record(*full) == RequestRecord(*full)
    assert request_record(*full[:9]) == RequestRecord(*full[:9])
    assert type(request_record(*full)) is RequestRecord
