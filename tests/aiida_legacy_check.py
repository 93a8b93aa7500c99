"""Run by aiida-core's python (not ours): migrate a legacy archive to main_0001 and print what the result holds.

Usage: ``python aiida_legacy_check.py ARCHIVE WORKDIR`` with ``AIIDA_PATH`` inside WORKDIR. Prints one JSON object:
every node (by uuid) with its node_type, process_type, repository_metadata and attributes, every link as
``[input uuid, output uuid, type, label]``, the groups' type strings by label and the computers' plugin names.
"""
from __future__ import annotations

import json
import pathlib
import sqlite3
import sys
import zipfile


def main() -> None:
    archive, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    from aiida.tools.archive.implementations.sqlite_zip.main import ArchiveFormatSqlZip

    migrated = work / "migrated.aiida"
    ArchiveFormatSqlZip().migrate(archive, migrated, "main_0001")
    with zipfile.ZipFile(migrated) as zipped:
        database = pathlib.Path(zipped.extract("db.sqlite3", work))
    connection = sqlite3.connect(database)
    nodes = {
        uuid: {"node_type": node_type, "process_type": process_type,
               "repository_metadata": json.loads(repository), "attributes": json.loads(attributes)}
        for uuid, node_type, process_type, repository, attributes in connection.execute(
            "SELECT uuid, node_type, process_type, repository_metadata, attributes FROM db_dbnode")
    }
    links = sorted(list(row) for row in connection.execute(
        "SELECT i.uuid, o.uuid, l.type, l.label FROM db_dblink l"
        " JOIN db_dbnode i ON i.id = l.input_id JOIN db_dbnode o ON o.id = l.output_id"))
    groups = dict(connection.execute("SELECT label, type_string FROM db_dbgroup").fetchall())
    computers = {uuid: [label, scheduler, transport] for uuid, label, scheduler, transport in connection.execute(
        "SELECT uuid, label, scheduler_type, transport_type FROM db_dbcomputer")}
    print(json.dumps({"nodes": nodes, "links": links, "groups": groups, "computers": computers}))


if __name__ == "__main__":
    main()
