"""The package surface: names exported, sorted, and importable with the stdlib alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import stoic
import stoic.messaging as messaging


def test_all_names_exist_and_are_sorted() -> None:
    # isort style, as ruff keeps it: constants first, then classes and functions
    assert messaging.__all__ == sorted(messaging.__all__, key=lambda n: (not n.isupper(), n))
    for name in messaging.__all__:
        assert hasattr(messaging, name), name


def test_import_needs_no_optional_library() -> None:
    code = (
        "import sys, stoic.messaging\n"
        "bad = [m for m in ('redis', 'aio_pika', 'aiormq', 'psycopg', 'typer', 'opentelemetry')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    src = str(Path(stoic.__file__).parent.parent)
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": src},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("url", "kind"),
    [("memory://", "MemoryBroker"), ("sqlite:///q.db", "SQLiteBroker")],
)
def test_connect_picks_the_broker_from_the_url(
    url: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = messaging.connect(url)
    assert type(broker).__name__ == kind
    broker.close()


def test_connect_absolute_sqlite_path_and_options(tmp_path: Path) -> None:
    broker = messaging.connect(f"sqlite:///{tmp_path}/abs.db?synchronous=full")
    assert broker.path == f"{tmp_path}/abs.db"
    assert broker.synchronous == "FULL"
    broker.close()


def test_connect_rejects_unknown_schemes() -> None:
    with pytest.raises(ValueError, match="unknown broker scheme"):
        messaging.connect("kafka://localhost")


def test_connect_redis_and_amqp(redis_url: str, amqp_url: str) -> None:
    r = messaging.connect(redis_url)
    a = messaging.connect(amqp_url)
    assert type(r).__name__ == "RedisBroker"
    assert type(a).__name__ == "RabbitBroker"
    r.close()
    a.close()
