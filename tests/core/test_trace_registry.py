import json

import pytest

from mosaic.core.errors import MosaicError, RegistryError
from mosaic.core.registry import Registry
from mosaic.core.trace import AggregationRecord, LoadRecord, RequestRecord, TraceWriter, read_trace


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


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceWriter(path) as w:
        w.write(LoadRecord("expert", 1, "b", 0.0, 1.0))
    with path.open("a") as fh:
        fh.write('{"type": "request", "stage": "exp')
    assert len(list(read_trace(path))) == 1


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
