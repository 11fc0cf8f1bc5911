"""The server rows of benchmarks/queues.py: PostgreSQL (PostgresBroker against Procrastinate,
pgqueuer and raw SKIP LOCKED statements) and NATS JetStream (NatsBroker against raw nats-py).
Run them through queues.py: ``--only postgres`` or ``--only nats``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from queues_common import BODY, PAYLOAD, rate, record

# --- PostgreSQL --------------------------------------------------------------------------

def postgres_rows(n: int, dsn: str, rounds: int = 3) -> None:
    """PostgresBroker, Procrastinate, pgqueuer and raw SKIP LOCKED on one server, each in a
    schema of this run (``search_path`` for the peers), alternating round after round."""
    import asyncio
    import uuid
    from datetime import timedelta

    import psycopg

    from stoic.messaging.postgres import PostgresBroker

    schema = f"stoic_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(dsn, autocommit=True)
    admin.execute(f"CREATE SCHEMA {schema}")
    scoped = f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = max(best.get(name, 0.0), value)

    try:
        raw = psycopg.connect(scoped, autocommit=True)
        raw.execute("CREATE TABLE raw_q (id BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL,"
                    " body TEXT NOT NULL, leased_until DOUBLE PRECISION NOT NULL DEFAULT 0)")
        raw.execute("CREATE INDEX raw_q_ready ON raw_q (topic, leased_until, id)")
        broker = PostgresBroker(dsn, schema=schema, min_size=1, max_size=2)

        import procrastinate
        from procrastinate.jobs import Status

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=scoped))

        @app.task(name="bench")
        def bench(payload: Any) -> None:  # never run: the benchmark fetches and finishes
            return None

        from pgqueuer.queries import EntrypointExecutionParameter, Queries

        async def pgq_setup() -> Any:
            conn = await psycopg.AsyncConnection.connect(scoped, autocommit=True)
            q = Queries.from_psycopg_connection(conn)
            await q.install()
            return conn, q

        loop = asyncio.new_event_loop()
        pgq_conn, pgq = loop.run_until_complete(pgq_setup())
        loop.run_until_complete(app.open_async())
        loop.run_until_complete(app.schema_manager.apply_schema_async())
        worker_id = loop.run_until_complete(app.job_manager.register_worker())
        entry = {"bench": EntrypointExecutionParameter(concurrency_limit=0)}
        qm_id = uuid.uuid4()
        now = time.time

        def raw_publish() -> None:
            for _ in range(n):
                raw.execute("INSERT INTO raw_q (topic, body) VALUES (%s, %s)", ("t", BODY))

        def raw_consume() -> None:
            for _ in range(n):
                row = raw.execute(
                    "UPDATE raw_q SET leased_until = %s WHERE id = (SELECT id FROM raw_q"
                    " WHERE topic = %s AND leased_until < %s ORDER BY leased_until, id"
                    " LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, body",
                    (now() + 30, "t", now())).fetchone()
                assert row is not None
                json.loads(row[1])
                raw.execute("DELETE FROM raw_q WHERE id = %s", (row[0],))

        def raw_consume_many() -> None:
            got = 0
            while got < n:
                batch = raw.execute(
                    "UPDATE raw_q SET leased_until = %s WHERE id IN (SELECT id FROM raw_q"
                    " WHERE topic = %s AND leased_until < %s ORDER BY leased_until, id"
                    " LIMIT 32 FOR UPDATE SKIP LOCKED) RETURNING id, body",
                    (now() + 30, "t", now())).fetchall()
                for _, body in batch:
                    json.loads(body)
                raw.execute("DELETE FROM raw_q WHERE id = ANY(%s)", ([r[0] for r in batch],))
                got += len(batch)

        def stoic_publish() -> None:
            for _ in range(n):
                broker.publish("t", PAYLOAD)

        def stoic_consume() -> None:
            for _ in range(n):
                [m] = broker.claim("t")
                m.payload  # noqa: B018 - decode, as a consumer would
                broker.ack(m)

        def stoic_ack_and_claim() -> None:  # the Worker's loop: ack + next claim, one statement
            done: list[Any] = []
            for _ in range(n):
                _, [m] = broker.ack_and_claim(done, "t")
                m.payload  # noqa: B018
                done = [m]
            broker.ack_many(done)

        def stoic_worker() -> None:  # a Worker draining the queue, one message at a time
            from stoic.messaging import Worker

            Worker(broker, "t", lambda m: m.payload, prefetch=1).run(stop_when_empty=True)

        def stoic_publish_many() -> None:
            for _ in range(n // 100):
                broker.publish_many("t", [PAYLOAD] * 100)

        def stoic_consume_many() -> None:
            got = 0
            while got < n:
                batch = broker.claim("t", max_messages=32)
                for m in batch:
                    m.payload  # noqa: B018
                got += broker.ack_many(batch)

        def procrastinate_defer() -> None:
            async def go() -> None:
                for _ in range(n):
                    await bench.defer_async(payload=PAYLOAD)
            loop.run_until_complete(go())

        def procrastinate_consume() -> None:
            async def go() -> None:
                for _ in range(n):
                    job = await app.job_manager.fetch_job(queues=None, worker_id=worker_id)
                    assert job is not None
                    await app.job_manager.finish_job(job, Status.SUCCEEDED, delete_job=True)
            loop.run_until_complete(go())

        def pgq_enqueue() -> None:
            async def go() -> None:
                for _ in range(n):
                    await pgq.enqueue("bench", BODY.encode())
            loop.run_until_complete(go())

        def pgq_consume_many() -> None:
            async def go() -> None:
                got = 0
                while got < n:
                    jobs = await pgq.dequeue(32, entry, qm_id, None, timedelta(seconds=30))
                    await pgq.log_jobs([(job, "successful", None) for job in jobs])
                    got += len(jobs)
            loop.run_until_complete(go())

        def pgq_enqueue_many() -> None:
            async def go() -> None:
                for _ in range(n // 100):
                    await pgq.enqueue(["bench"] * 100, [BODY.encode()] * 100, [0] * 100)
            loop.run_until_complete(go())

        def pgq_consume() -> None:
            async def go() -> None:
                for _ in range(n):
                    [job] = await pgq.dequeue(1, entry, qm_id, None, timedelta(seconds=30))
                    await pgq.log_jobs([(job, "successful", None)])
            loop.run_until_complete(go())

        pairs = [
            ("raw INSERT, one commit each (floor)", raw_publish,
             "raw SKIP LOCKED claim + DELETE (floor)", raw_consume),
            ("stoic PostgresBroker.publish", stoic_publish,
             "stoic PostgresBroker claim(1) + ack", stoic_consume),
            ("stoic PostgresBroker.publish (2)", stoic_publish,
             "stoic PostgresBroker ack_and_claim(1)", stoic_ack_and_claim),
            ("stoic PostgresBroker.publish (3)", stoic_publish,
             "stoic Worker(prefetch=1), no-op handler", stoic_worker),
            ("stoic PostgresBroker.publish_many (100)", stoic_publish_many,
             "stoic PostgresBroker claim(32) + ack_many", stoic_consume_many),
            ("procrastinate defer_async", procrastinate_defer,
             "procrastinate fetch_job + finish_job", procrastinate_consume),
            ("pgqueuer enqueue", pgq_enqueue, "pgqueuer dequeue(1) + log_jobs", pgq_consume),
            ("raw INSERT x100 per commit (floor)", lambda: [raw.execute(
                "INSERT INTO raw_q (topic, body) SELECT 't', b FROM unnest(%s::text[]) AS b",
                ([BODY] * 100,)) for _ in range(n // 100)],
             "raw SKIP LOCKED claim 32 + DELETE 32 (floor)", raw_consume_many),
            ("pgqueuer enqueue x100 (one statement)", pgq_enqueue_many,
             "pgqueuer dequeue(32) + log_jobs(32)", pgq_consume_many),
        ]
        for r in range(rounds):
            for pub_name, pub, con_name, con in pairs:
                keep(pub_name, rate(n, pub))
                keep(con_name, rate(n, con))
            print(f"  postgres round {r + 1} of {rounds} done", flush=True)
        for pub_name, _, con_name, _ in pairs:
            record("postgres", pub_name + ", best of 3", "sync_commit", best[pub_name])
            # a stoic claim commits without waiting for the WAL flush; its ack waits
            kind = "claim_async" if con_name.startswith("stoic") else "sync_commit"
            record("postgres", con_name + ", best of 3", kind, best[con_name])
        loop.run_until_complete(app.job_manager.unregister_worker(worker_id))
        loop.run_until_complete(app.close_async())
        loop.run_until_complete(pgq_conn.close())
        loop.close()
        broker.close()
        raw.close()
    finally:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()


# --- NATS JetStream -----------------------------------------------------------------------

def nats_rows(n: int, url: str, rounds: int = 3) -> None:
    """NatsBroker against raw nats-py JetStream (same server, file storage, one stream per
    side per round, deleted after). Raw nats-py runs on asyncio's loop and on uvloop's, each
    row keeping its best; stoic's broker runs on its loop thread (uvloop's when installed)."""
    import asyncio
    import uuid

    import nats
    from nats.js import api

    from stoic.messaging.nats import NatsBroker

    broker = NatsBroker(url, prefix="stoicbench")
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = max(best.get(name, 0.0), value)

    async def raw_round() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        stream = f"rawbench_{uuid.uuid4().hex[:8]}"
        subject = f"rawbench.{stream}"
        await js.add_stream(name=stream, subjects=[subject],
                            retention=api.RetentionPolicy.WORK_QUEUE,
                            storage=api.StorageType.FILE)
        try:
            start = time.perf_counter()
            for i in range(n):
                await js.publish(subject, BODY.encode(), headers={"Nats-Msg-Id": f"a{i}"})
            keep("raw js.publish, one at a time", n / (time.perf_counter() - start))
            start = time.perf_counter()
            for k in range(n // 100):
                await asyncio.gather(*(js.publish(subject, BODY.encode(), headers={
                    "Nats-Msg-Id": f"b{k}-{i}"}) for i in range(100)))
            keep("raw js.publish, 100 in flight", n / (time.perf_counter() - start))
            psub = await js.pull_subscribe(subject, durable="raw", stream=stream)
            start = time.perf_counter()
            for _ in range(n):
                [msg] = await psub.fetch(1, timeout=5)
                json.loads(msg.data)
                await msg.ack()
            await nc.flush()
            keep("raw fetch(1) + ack", n / (time.perf_counter() - start))
            start = time.perf_counter()
            got = 0
            while got < n:
                msgs = await psub.fetch(32, timeout=5)
                for msg in msgs:
                    json.loads(msg.data)
                    await msg.ack()
                await nc.flush()
                got += len(msgs)
            keep("raw fetch(32) + ack each + flush", n / (time.perf_counter() - start))
        finally:
            await js.delete_stream(stream)
            await nc.close()

    def stoic_round() -> None:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        try:
            keep("stoic NatsBroker.publish, one at a time",
                 rate(n, lambda: [broker.publish(topic, PAYLOAD) for _ in range(n)]))
            keep("stoic NatsBroker.publish_many (100)", rate(n, lambda: [
                broker.publish_many(topic, [PAYLOAD] * 100) for _ in range(n // 100)]))

            def one() -> None:
                for _ in range(n):
                    [m] = broker.claim(topic)
                    m.payload  # noqa: B018
                    broker.ack(m)

            def many() -> None:
                got = 0
                while got < n:
                    batch = broker.claim(topic, max_messages=32)
                    for m in batch:
                        m.payload  # noqa: B018
                    got += broker.ack_many(batch)

            keep("stoic NatsBroker claim(1) + ack", rate(n, one))
            keep("stoic NatsBroker claim(32) + ack_many", rate(n, many))
        finally:
            broker.delete_topic(topic)

    from stoic.messaging.loop import new_loop

    for r in range(rounds):
        # raw nats-py on asyncio's loop and on uvloop's (what stoic's loop thread runs when
        # uvloop is installed); each raw row keeps the better of the two
        asyncio.run(raw_round())
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(raw_round())
        stoic_round()
        print(f"  nats round {r + 1} of {rounds} done", flush=True)
    broker.close()
    for name, value in best.items():
        record("nats", name + ", best of 3", "file", value)
