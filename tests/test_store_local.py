import pytest

from latentq.errors import StoreError
from latentq.store import LocalStore, make_key, open_store

pytestmark = pytest.mark.timeout(30)


def test_put_get_and_urls(tmp_path):
    store = LocalStore(tmp_path)
    key = make_key("job1", "png")
    store.put(key, b"abc", "image/png")
    assert store.get(key) == b"abc" and store.exists(key)
    assert store.url(key).startswith("file://")
    assert LocalStore(tmp_path, public_url="http://h:1/").url(key) == f"http://h:1/v1/results/{key}"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [key.split("/")[1]]  # one file per key
    store.delete(key)
    assert not store.exists(key)


def test_keys_are_unguessable_and_cannot_escape(tmp_path):
    assert make_key("job", "png") != make_key("job", "png")
    store = LocalStore(tmp_path)
    for bad in ["../etc/passwd", "job/../../x.png", "/abs/x.png", "job/short.png", "a/b/c.png"]:
        with pytest.raises(StoreError):
            store.put(bad, b"x", "image/png")
    with pytest.raises(StoreError, match="no result object"):
        store.get(make_key("job", "png"))


def test_open_store_reads_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTQ_STORE", str(tmp_path / "r"))
    store = open_store()
    assert isinstance(store, LocalStore) and store.root == (tmp_path / "r").resolve()
