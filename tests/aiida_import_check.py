"""Run by aiida-core's python (not ours): import an archive into a throwaway profile and print what it holds.

Usage: ``python aiida_import_check.py ARCHIVE WORKDIR [START_UUID]`` with ``AIIDA_PATH`` inside WORKDIR. Prints one
JSON object: counts per entity, links per type, group members per label, every node's attributes by uuid and, with
START_UUID, the uuids aiida-core's own EXPORT traversal reaches from that node.
"""
from __future__ import annotations

import collections
import json
import pathlib
import sys


def main() -> None:
    archive, work = sys.argv[1], pathlib.Path(sys.argv[2])
    start = sys.argv[3] if len(sys.argv) > 3 else None
    from aiida import load_profile, orm
    from aiida.manage.configuration import create_profile, get_config
    from aiida.tools.archive import import_archive

    config = get_config(create=True)
    create_profile(config, storage_backend="core.sqlite_dos", storage_config={"filepath": str(work / "storage")},
                   name="check", email="check@example.org")
    config.set_default_profile("check", overwrite=True)
    config.store()
    load_profile("check", allow_switch=True)
    import_archive(archive, import_new_extras=True)

    links = collections.Counter(
        link_type for (link_type,) in orm.QueryBuilder().append(orm.Node).append(orm.Node, edge_project="type").all()
    )
    groups = {
        group.label: sorted(str(node.uuid) for node in group.nodes)
        for group in orm.QueryBuilder().append(orm.Group, filters={"type_string": {"!==": "core.import"}}).all(flat=True)
    }
    nodes = {uuid: attributes for uuid, attributes in orm.QueryBuilder().append(orm.Node, project=["uuid", "attributes"]).all()}
    result = {
        "nodes": len(nodes),
        "links": dict(links),
        "groups": groups,
        "comments": sorted(c.content for c in orm.QueryBuilder().append(orm.Comment).all(flat=True)),
        "logs": sorted(log.message for log in orm.QueryBuilder().append(orm.Log).all(flat=True)),
        "computers": sorted(c.label for c in orm.QueryBuilder().append(orm.Computer).all(flat=True)),
        "users": sorted(u.email for u in orm.QueryBuilder().append(orm.User).all(flat=True)),
        "attributes": nodes,
    }
    if start is not None:
        from aiida.tools.graph.graph_traversers import get_nodes_export

        pk = orm.load_node(start).pk
        reached = get_nodes_export(starting_pks=[pk])["nodes"]
        result["export_traversal"] = sorted(str(orm.load_node(p).uuid) for p in reached)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
