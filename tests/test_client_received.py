from __future__ import annotations

import json

import pytest

from securechat.client.received import ReceivedLog


def saved(log: ReceivedLog, store: dict[str, bytes]) -> None:
    for name, value in log.take_dirty().items():
        if value is None:
            store.pop(name, None)
        else:
            store[name] = value


def test_adding_one_id_rewrites_one_small_record_and_survives_a_reload() -> None:
    store: dict[str, bytes] = {}
    log = ReceivedLog(store)
    for i in range(ReceivedLog.BUCKET + 3):
        log.add(f"bob/{i}")
        dirty = log.take_dirty()
        assert len(dirty) == 1  # only the newest bucket, never everything
        value = next(iter(dirty.values()))
        assert value is not None and len(json.loads(value)) <= ReceivedLog.BUCKET
        store.update({k: v for k, v in dirty.items() if v is not None})
    again = ReceivedLog(store)
    assert "bob/0" in again and f"bob/{ReceivedLog.BUCKET + 2}" in again and "bob/x" not in again
    assert len(again) == ReceivedLog.BUCKET + 3


def test_the_oldest_bucket_is_forgotten_and_deleted_past_the_limit() -> None:
    store: dict[str, bytes] = {}
    log = ReceivedLog(store, limit=2 * ReceivedLog.BUCKET)
    for i in range(2 * ReceivedLog.BUCKET + 1):
        log.add(f"a/{i}")
        saved(log, store)
    assert "a/0" not in log and f"a/{2 * ReceivedLog.BUCKET}" in log
    assert "received:1" not in store and len(store) == 2
    assert "a/0" not in ReceivedLog(store, limit=2 * ReceivedLog.BUCKET)


def test_a_repeat_changes_nothing() -> None:
    log = ReceivedLog()
    log.add("a/1")
    log.take_dirty()
    log.add("a/1")
    assert log.take_dirty() == {} and len(log) == 1


def test_the_single_record_of_earlier_versions_is_migrated_to_buckets() -> None:
    legacy = {"received": json.dumps(["a/1", "a/2"]).encode()}
    log = ReceivedLog(legacy)
    assert "a/1" in log and "a/2" in log
    store = dict(legacy)
    saved(log, store)
    assert "received" not in store and json.loads(store["received:1"]) == ["a/1", "a/2"]


@pytest.mark.parametrize(
    "records",
    [
        {"received:1": b"not json"},
        {"received:1": b'{"a": 1}'},
        {"received:1": b"[1, 2]"},
        {"received:x": b"[]"},
    ],
)
def test_malformed_records_are_refused(records: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="malformed keystore record"):
        ReceivedLog(records)
