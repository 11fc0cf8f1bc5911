"""A worker process for the flow-control tests.

argv: broker-url topic flow-options-json log-file concurrency
Each handled message appends one JSON line to log-file: the message's key (from its
topic), id, payload, and the wall-clock start and end of the handler. A payload
``{"sleep": s}`` makes the handler take ``s`` seconds. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import os
import sys
import time

from stoic.messaging import Message, Worker, connect
from stoic.messaging.flow import FlowControl


def main(url: str, topic: str, options: str, log_path: str, concurrency: str) -> None:
    broker = connect(url)
    flow = FlowControl(**json.loads(options))
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handler(message: Message) -> None:
        start = time.time()
        payload = message.payload
        if isinstance(payload, dict) and payload.get("sleep"):
            time.sleep(float(payload["sleep"]))
        line = {"topic": message.topic, "key": message.topic.rpartition(":")[2],
                "id": message.id, "payload": payload, "start": start, "end": time.time(),
                "pid": os.getpid()}
        os.write(log, (json.dumps(line) + "\n").encode())

    Worker(broker, topic, handler, flow=flow, concurrency=int(concurrency), lease=10.0,
           poll_interval=0.05).run()
    broker.close()


if __name__ == "__main__":
    main(*sys.argv[1:6])
