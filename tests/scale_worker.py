"""A worker process for the scale-out tests: stores nodes, a link and a setting per transaction for N seconds.

Run as ``python scale_worker.py URL WORKER_ID SECONDS OUT_FILE`` (in a network namespace via ``ip netns exec``);
``AIIDA_SQLA_WORKER_ENGINE_KWARGS`` (JSON) gives the profile's ``engine_kwargs``.
Each round ``i`` stores, in one transaction, nodes labelled ``W:i:a`` and ``W:i:b``, a link ``W_i`` between them
and the setting ``w_W_i``. After the commit returned it appends ``ok i`` to OUT_FILE; a round that raised
:class:`UnreachableStorage` appends ``lost i`` (the caller decides whether that was allowed), any other error
``error i Type: message``. The last line is ``done``.
"""
from __future__ import annotations

import json
import os
import sys
import time

from sqlalchemy import select

import aiida_sqla_plugin
from aiida_sqla_plugin.backend import SqlaBackend
from aiida_sqla_plugin.exceptions import UnreachableStorage
from aiida_sqla_plugin.models import DbLink, DbNode, DbSetting, DbUser
from aiida_sqla_plugin.profile import Profile

#: Seconds a worker waits after a lost connection before its next round.
RETRY_PAUSE = 0.2


def store_round(backend: SqlaBackend, worker: str, index: int, user_id: int) -> None:
    with backend.transaction(write=True) as session:
        first = DbNode(node_type="data.core.int.Int.", user_id=user_id, label=f"{worker}:{index}:a", attributes={"i": index})
        second = DbNode(node_type="data.core.int.Int.", user_id=user_id, label=f"{worker}:{index}:b", attributes={"i": index})
        session.add_all([first, second])
        session.flush()
        session.add(DbLink(input_id=first.id, output_id=second.id, type="create", label=f"{worker}_{index}"))
        session.add(DbSetting(key=f"w_{worker}_{index}", val=index))


def main(url: str, worker: str, seconds: float, out_path: str) -> None:
    engine_kwargs = json.loads(os.environ.get("AIIDA_SQLA_WORKER_ENGINE_KWARGS", "{}"))
    profile = Profile(f"worker-{worker}", storage_config={"url": url, "engine_kwargs": engine_kwargs})
    aiida_sqla_plugin.reset_session(profile)
    backend = SqlaBackend(profile)
    with open(out_path, "a", buffering=1) as out:
        user_id = None
        deadline = time.monotonic() + seconds
        index = 0
        while time.monotonic() < deadline:
            try:
                if user_id is None:
                    with backend.transaction() as session:
                        user_id = session.scalar(select(DbUser.id).order_by(DbUser.id).limit(1))
                store_round(backend, worker, index, user_id)
                out.write(f"ok {index}\n")
            except UnreachableStorage as error:
                out.write(f"lost {index} {str(error).splitlines()[0]}\n")
                time.sleep(RETRY_PAUSE)
            except Exception as error:  # noqa: BLE001 - every other error is reported to the test
                out.write(f"error {index} {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}\n")
                time.sleep(RETRY_PAUSE)
            index += 1
        out.write("done\n")
    aiida_sqla_plugin.dispose_engines()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4])
