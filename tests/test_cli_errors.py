"""Every ``stoic`` command meets a bad input with one line on stderr, never a traceback.

Each command that takes a backend is run with each bad input (missing file or directory, a
file that is not a database, a directory, a wrong scheme, a malformed URL, Redis, PostgreSQL,
RabbitMQ and NATS on a free port where nothing listens, a server that accepts and never
answers, a bad table name, a bad policy file, an unreachable fault proxy). Each run must exit
2 (usage) or 1 (run time), print a single line naming the problem, create no file, and finish
in under 10 s. The matrix runs in-process; the reproductions from the issue also run as real
``python -m stoic`` processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stoic.cli import build_app
from support import free_port

SRC = Path(__file__).resolve().parent.parent / "src"
LIMIT = 10.0  # seconds, per command

QUEUE_COMMANDS = [
    ["queue", "stats", "orders"],
    ["queue", "peek", "orders"],
    ["queue", "dlq", "list", "orders"],
    ["queue", "dlq", "requeue", "orders", "--id", "a"],
    ["queue", "dlq", "purge", "orders", "--yes"],
]
STORE_COMMANDS = [["idempotency", "migrate"], ["idempotency", "purge"]]


@dataclass(frozen=True)
class Bad:
    """A bad backend URL, what a queue command, ``migrate`` and ``purge`` must say about it."""

    name: str
    url: str
    queue: tuple[int, str]
    migrate: tuple[int, str]
    purge: tuple[int, str]


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A server that accepts connections and never says a word (a hung or firewalled peer)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


def bad_inputs(silent: int) -> list[Bad]:
    pg_only = (2, "unsupported scheme")
    down = free_port()
    return [
        Bad("missing-directory", "sqlite:///missing/dir/x.db", (1, "no such file missing/dir/x.db"),
            pg_only, (1, "no such file missing/dir/x.db")),
        Bad("missing-file", "sqlite:///nonexist.db", (1, "no such file nonexist.db"),
            pg_only, (1, "no such file nonexist.db")),
        Bad("not-a-database", "sqlite:///notes.db", (1, "not a SQLite database"),
            pg_only, (1, "not a SQLite database")),
        Bad("a-directory", "sqlite:///adir", (1, "adir is a directory"),
            pg_only, (1, "adir is a directory")),
        Bad("wrong-scheme", "mysql://127.0.0.1/db", (2, "unsupported scheme 'mysql'"),
            (2, "unsupported scheme 'mysql'"), (2, "unsupported scheme 'mysql'")),
        Bad("not-a-url", "orders.db", (2, "expected a URL"), (2, "expected a URL"),
            (2, "expected a URL")),
        Bad("malformed-port", "redis://127.0.0.1:port/0", (2, "malformed URL"),
            (2, "malformed URL"), (2, "malformed URL")),
        Bad("redis-down", f"redis://127.0.0.1:{down}/0", (1, "cannot connect to Redis"),
            pg_only, (1, "cannot connect to Redis")),
        Bad("postgres-down", f"postgresql://postgres@127.0.0.1:{down}/test",
            (1, "Connection refused"), (1, "Connection refused"), (1, "Connection refused")),
        Bad("rabbitmq-down", f"amqp://guest:guest@127.0.0.1:{down}/",
            (1, "cannot connect to RabbitMQ"), (2, "unsupported scheme 'amqp'"),
            (2, "unsupported scheme 'amqp'")),
        Bad("nats-down", f"nats://127.0.0.1:{down}", (1, "cannot connect: Connection refused"),
            (2, "unsupported scheme 'nats'"), (2, "unsupported scheme 'nats'")),
        Bad("redis-silent", f"redis://127.0.0.1:{silent}/0", (1, "no answer within 2 s"),
            pg_only, (1, "no answer within 2 s")),
        Bad("postgres-silent", f"postgresql://postgres@127.0.0.1:{silent}/test",
            (1, "no answer within 2 s"), (1, "no answer within 2 s"),
            (1, "no answer within 2 s")),
        Bad("rabbitmq-silent", f"amqp://guest:guest@127.0.0.1:{silent}/",
            (1, "no answer within 2 s"), (2, "unsupported scheme 'amqp'"),
            (2, "unsupported scheme 'amqp'")),
    ]


def files_under(directory: Path) -> set[Path]:
    return {p.relative_to(directory) for p in directory.rglob("*")}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "notes.db").write_text("shopping list: milk, eggs, a better queue\n")
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STOIC_BROKER", raising=False)
    monkeypatch.delenv("STOIC_STORE", raising=False)
    return tmp_path


def assert_one_line_error(args: list[str], code: int, fragment: str, workdir: Path) -> None:
    before = files_under(workdir)
    started = time.monotonic()
    result = CliRunner().invoke(build_app(), args)
    elapsed = time.monotonic() - started
    shown = f"stoic {' '.join(args)}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    assert isinstance(result.exception, SystemExit), f"{shown}\nraised {result.exception!r}"
    assert result.exit_code == code, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert fragment in lines[0], shown
    assert "Traceback" not in result.output, shown
    assert files_under(workdir) == before, f"{shown}\na file was created"
    assert elapsed < LIMIT, f"{shown}\ntook {elapsed:.1f} s"


@pytest.mark.parametrize("command", QUEUE_COMMANDS, ids=lambda c: " ".join(c[1:c.index("orders")]))
def test_queue_commands_answer_every_bad_broker_with_one_line(
    command: list[str], workdir: Path, silent_port: int,
) -> None:
    for bad in bad_inputs(silent_port):
        code, fragment = bad.queue
        assert_one_line_error([*command, "--broker", bad.url, "--timeout", "2"], code, fragment,
                              workdir)


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda c: c[1])
def test_idempotency_commands_answer_every_bad_store_with_one_line(
    command: list[str], workdir: Path, silent_port: int,
) -> None:
    for bad in bad_inputs(silent_port):
        code, fragment = bad.migrate if command[1] == "migrate" else bad.purge
        assert_one_line_error([*command, "--store", bad.url, "--timeout", "2"], code, fragment,
                              workdir)


def test_queue_migrate_answers_every_bad_broker_with_one_line(
    workdir: Path, silent_port: int,
) -> None:
    for bad in bad_inputs(silent_port):
        code, fragment = bad.migrate
        assert_one_line_error(["queue", "migrate", "--broker", bad.url, "--timeout", "2"], code,
                              fragment, workdir)


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda c: c[1])
def test_a_bad_table_name_is_a_usage_error_before_any_connection(
    command: list[str], workdir: Path,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    assert_one_line_error([*command, "--store", url, "--table", "x; drop"], 2,
                          "--table: table must be an SQL name", workdir)


def test_a_missing_backend_is_a_usage_error(workdir: Path) -> None:
    assert_one_line_error(["idempotency", "purge"], 2, "missing --store URL (or STOIC_STORE)",
                          workdir)


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--backend", "redis", "--redis-url", "redis://127.0.0.1:{down}/0"], 1,
         "cannot connect to Redis"),
        (["--backend", "rabbitmq", "--amqp-url", "amqp://guest:guest@127.0.0.1:{down}/"], 1,
         "cannot connect to RabbitMQ"),
        (["--backend", "redis", "--redis-url", "amqp://127.0.0.1/"], 2,
         "--redis-url: unsupported scheme 'amqp'"),
        (["--report", "nodir/report.html"], 2, "directory nodir does not exist"),
    ],
)
def test_demo_refuses_bad_backends_and_paths_before_starting_the_shop(
    args: list[str], code: int, fragment: str, workdir: Path,
) -> None:
    down = str(free_port())
    assert_one_line_error(["demo", *(a.replace("{down}", down) for a in args)], code, fragment,
                          workdir)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--slo", "2"], "slo"),
        (["--out", "notes.db"], "--out must be a directory"),
    ],
)
def test_alerts_render_refuses_bad_arguments_with_one_line(
    args: list[str], fragment: str, workdir: Path,
) -> None:
    out = [] if "--out" in args else ["--out", "rules"]
    assert_one_line_error(["alerts", "render", "--service", "shop", *out, *args], 2, fragment,
                          workdir)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read it"),
        ("x = [\n", "not valid TOML"),
        ("[policies.payments]\nretry = {attempts = 0}\n", "policies.payments.retry.attempts = 0"),
    ],
)
def test_config_check_refuses_a_bad_file_with_one_line(
    content: str | None, fragment: str, workdir: Path,
) -> None:
    if content is not None:
        (workdir / "policies.toml").write_text(content)
    assert_one_line_error(["config", "check", "policies.toml"], 2, fragment, workdir)


@pytest.mark.parametrize(
    "command",
    [
        ["proxy", "list"],
        ["proxy", "create", "db", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:5432"],
        ["proxy", "delete", "db"],
        ["proxy", "toggle", "db"],
        ["proxy", "toxic", "list", "db"],
        ["proxy", "toxic", "add", "db", "-t", "latency", "-a", "latency=100"],
        ["proxy", "toxic", "remove", "db", "-n", "latency_downstream"],
    ],
    ids=lambda c: " ".join(c[1:3]),
)
def test_proxy_commands_answer_an_unreachable_proxy_with_one_line(
    command: list[str], workdir: Path,
) -> None:
    assert_one_line_error([*command, "--host", f"127.0.0.1:{free_port()}"], 1,
                          "cannot reach the proxy API", workdir)


# --- the issue's reproductions, as real processes ----------------------------------------


def run_stoic(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("STOIC_BROKER", None)
    env.pop("STOIC_STORE", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stoic", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - started


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["queue", "stats", "orders", "-b", "sqlite:///missing/dir/x.db"], 1, "no such file"),
        (["queue", "stats", "orders", "-b", "sqlite:///notes.db"], 1, "not a SQLite database"),
        (["queue", "stats", "orders", "-b", "sqlite:///nonexist.db"], 1, "no such file"),
        (["queue", "stats", "q", "-b", "redis://127.0.0.1:{down}/0"], 1,
         "cannot connect to Redis"),
        (["queue", "peek", "q", "-b", "amqp://guest:guest@127.0.0.1:{down}/"], 1,
         "cannot connect to RabbitMQ"),
        (["idempotency", "migrate", "postgresql://postgres@127.0.0.1:{down}/test"], 1,
         "Connection refused"),
        (["idempotency", "migrate", "sqlite:///x.db"], 2, "unsupported scheme 'sqlite'"),
        (["idempotency", "migrate", "postgresql://postgres@127.0.0.1:{down}/test",
          "--table", "x; drop"], 2, "--table"),
        (["idempotency", "purge", "sqlite:///nodir/x.db"], 1, "no such file"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_the_issue_reproductions_end_in_one_line_in_a_real_process(
    args: list[str], code: int, fragment: str, workdir: Path,
) -> None:
    down = str(free_port())
    args = [a.replace("{down}", down) for a in args]
    before = files_under(workdir)
    done, elapsed = run_stoic(args, workdir)
    shown = f"stoic {' '.join(args)}\n--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    assert done.returncode == code, shown
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], shown
    assert "Traceback" not in done.stdout + done.stderr, shown
    assert files_under(workdir) == before, f"{shown}\na file was created"
    assert elapsed < LIMIT, f"{shown}\ntook {elapsed:.1f} s"


def test_a_silent_server_costs_the_timeout_from_stoic_timeout_not_half_a_minute(
    workdir: Path, silent_port: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STOIC_TIMEOUT", "3")
    done, elapsed = run_stoic(
        ["idempotency", "migrate", "--store", f"postgresql://postgres@127.0.0.1:{silent_port}/t"],
        workdir,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"error: postgresql://postgres@127.0.0.1:{silent_port}/t: no answer within 3 s (--timeout)"
    )
    assert elapsed < LIMIT, f"took {elapsed:.1f} s"


def test_commands_that_connect_wait_5_seconds_by_default() -> None:
    for command in (["queue", "stats"], ["idempotency", "migrate"], ["idempotency", "purge"]):
        helped = CliRunner().invoke(build_app(), [*command, "--help"], env={"COLUMNS": "200"})
        [line] = [x for x in helped.stdout.splitlines() if "--timeout" in x]
        assert "[default: 5.0]" in line or "default: 5.0" in helped.stdout, helped.stdout


def test_version_and_completion_are_there() -> None:
    from stoic import __version__

    runner = CliRunner()
    result = runner.invoke(build_app(), ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"stoic {__version__}"
    helped = runner.invoke(build_app(), ["--help"])
    assert "--install-completion" in helped.stdout and "--show-completion" in helped.stdout


def test_alerts_render_help_names_only_its_real_parameters() -> None:
    helped = CliRunner().invoke(build_app(), ["alerts", "render", "--help"])
    assert helped.exit_code == 0
    assert "SERVICE" not in helped.stdout and " OUT" not in helped.stdout
    assert "--service" in helped.stdout and "--out" in helped.stdout


def test_a_bug_keeps_its_traceback_and_expected_failures_become_one_line() -> None:
    import sqlite3

    from stoic._cli import RUNTIME, USAGE, explain

    assert explain(KeyError("x")) is None
    assert explain(RuntimeError("boom")) is None
    not_db = explain(sqlite3.DatabaseError("file is not a database"))
    assert not_db is not None and (not_db.message, not_db.exit_code) == (
        "not a SQLite database", RUNTIME
    )
    bad_value = explain(ValueError("limit must be >= 1,\ngot 0"))
    assert bad_value is not None and (bad_value.message, bad_value.exit_code) == (
        "limit must be >= 1, got 0", USAGE
    )


def test_messages_never_show_a_password() -> None:
    from stoic._cli import redacted

    assert redacted("amqp://guest:s3cret@host:5672/") == "amqp://guest:***@host:5672/"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"
    result = CliRunner().invoke(
        build_app(),
        ["queue", "stats", "q", "-b", f"amqp://guest:s3cret@127.0.0.1:{free_port()}/"],
    )
    assert result.exit_code == 1
    assert "s3cret" not in result.output and "guest:***@" in result.output
