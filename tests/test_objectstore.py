"""The content-addressed object store: atomic, hash-checked writes and where each profile keeps its objects."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

import aiida_sqla_plugin
from aiida_sqla_plugin.config import data_dir
from aiida_sqla_plugin.exceptions import ConfigurationError, NotExistent, ValidationError
from aiida_sqla_plugin.objectstore import ObjectHashMismatch, ObjectStore, default_root, object_store_for


def _files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def test_put_open_has_keys_remove(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    assert list(store.keys()) == []
    data = b"some file content\n" * 1000
    key = store.put(io.BytesIO(data))
    assert key == hashlib.sha256(data).hexdigest()
    assert store.path(key) == tmp_path / "objects" / key[:2] / key[2:]
    assert store.has(key)
    with store.open(key) as handle:
        assert handle.read() == data
    assert store.put(io.BytesIO(data), expected_key=key) == key  # again: same key, still one file
    other = store.put(io.BytesIO(b""))
    assert sorted(store.keys()) == sorted([key, other])
    assert len(_files(store.root)) == 2
    store.remove(key)
    assert not store.has(key)
    assert list(store.keys()) == [other]
    with pytest.raises(NotExistent, match=key):
        store.open(key)
    with pytest.raises(NotExistent, match=key):
        store.remove(key)


def test_hash_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    wrong = hashlib.sha256(b"expected").hexdigest()
    with pytest.raises(ObjectHashMismatch, match=wrong):
        store.put(io.BytesIO(b"something else"), expected_key=wrong)
    assert _files(store.root) == []
    assert not store.has(wrong)


def test_failed_read_leaves_no_temporary_file(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        calls = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise OSError("disk gone")
            return b"x" * 10

    store = ObjectStore(tmp_path / "objects")
    with pytest.raises(OSError, match="disk gone"):
        store.put(Broken())  # type: ignore[arg-type]
    assert _files(store.root) == []


@pytest.mark.parametrize("key", ["", "abc", "G" * 64, "A" * 64, "../" + "a" * 61])
def test_bad_keys_refused(tmp_path: Path, key: str) -> None:
    store = ObjectStore(tmp_path)
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        store.has(key)
    with pytest.raises(ValidationError):
        store.put(io.BytesIO(b"x"), expected_key=key)


def test_location_from_profile(tmp_path: Path) -> None:
    sqlite = aiida_sqla_plugin.Profile(name="p", storage_config={"url": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    assert default_root(sqlite) == tmp_path / "db.sqlite.objects"
    postgres = aiida_sqla_plugin.Profile(name="prof", storage_config={"url": "postgresql://u@localhost/db"})
    assert default_root(postgres) == data_dir() / "objects" / "prof"
    configured = aiida_sqla_plugin.Profile(name="p", storage_config={"url": "postgresql://u@h/db", "repository": str(tmp_path / "r")})
    assert default_root(configured) == tmp_path / "r"
    memory = aiida_sqla_plugin.Profile(name="m", storage_config={"url": "sqlite://"})
    with pytest.raises(ConfigurationError, match="repository"):
        default_root(memory)


def test_object_store_of_backend(backend, dialect: str) -> None:
    store = object_store_for(backend)
    assert store.root == default_root(backend.profile)
    assert object_store_for(backend.profile).root == store.root
    if dialect == "sqlite":
        assert store.root.name == "storage.sqlite.objects"
