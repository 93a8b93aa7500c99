"""The ``aiida-sqla`` command line: a thin click layer over the library.

Each command group is one module that defines its group; this file registers each on the root group
(:data:`_root.cli`) with one ``add_command`` line. A new group is one new module plus one line here.
"""
from __future__ import annotations

from ._root import EXIT_CODES, cli, main
from .alembic import alembic_command
from .archive import archive_group
from .demo import demo
from .graph import graph_group
from .maintenance import storage_backup  # noqa: F401 - registers backup/restore/integrity/maintain on 'storage'
from .node import node_group
from .profile import profile_group
from .setting import setting_group
from .storage import storage_group

__all__ = ("EXIT_CODES", "cli", "main")

cli.add_command(profile_group)
cli.add_command(storage_group)
cli.add_command(alembic_command)
cli.add_command(setting_group)
cli.add_command(node_group)
cli.add_command(graph_group)
cli.add_command(demo)
cli.add_command(archive_group)
