"""``aiida-sqla node ...``: operate on provenance nodes (delete with AiiDA's rules)."""
from __future__ import annotations

from typing import Any

import click

from ..exceptions import NotExistent
from ..graph import delete_nodes
from ..reports import missing_nodes
from ._root import common_options, fail, get_state

__all__ = ("format_pks", "node_group", "require_nodes")


def require_nodes(backend: Any, pks: tuple[int, ...] | list[int]) -> None:
    missing = missing_nodes(backend.engine, pks)
    if missing:
        shown = ", ".join(map(str, sorted(missing)[:20])) + (", ..." if len(missing) > 20 else "")
        raise NotExistent(
            f"no node with pk {shown} in profile {backend.profile.name!r}; check the pks "
            "(aiida-sqla storage info shows how many nodes there are)"
        )


def format_pks(pks: set[int] | list[int], limit: int | None = None) -> str:
    ordered = sorted(pks)
    if limit is not None and len(ordered) > limit:
        return " ".join(map(str, ordered[:limit])) + f" ... ({len(ordered) - limit} more)"
    return " ".join(map(str, ordered))


@click.group("node")
@common_options
def node_group() -> None:
    """Operate on provenance nodes.

    \b
    Example:
      aiida-sqla node delete 42 --dry-run -v
    """


@node_group.command("delete")
@click.argument("pks", metavar="PK...", nargs=-1, type=int, required=True)
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--create-forward/--no-create-forward", default=None,
              help="Also delete the outputs created by deleted calculations (default: yes).")
@click.option("--call-calc-forward/--no-call-calc-forward", default=None,
              help="Also delete the calculations called by deleted workflows (default: yes).")
@click.option("--call-work-forward/--no-call-work-forward", default=None,
              help="Also delete the workflows called by deleted workflows (default: yes).")
@common_options
def node_delete(pks: tuple[int, ...], dry_run: bool, force: bool, create_forward: bool | None,
                call_calc_forward: bool | None, call_work_forward: bool | None) -> None:
    """Delete the nodes PK... and everything AiiDA's deletion rules drag along.

    Prints how many nodes would go (which ones with -v) and asks before deleting, unless --force.

    \b
    Example:
      aiida-sqla node delete 42 43 --dry-run -v
      aiida-sqla node delete 42 --no-create-forward --force
    """
    state = get_state()
    backend = state.backend()
    require_nodes(backend, pks)
    rules = {
        name: value
        for name, value in (("create_forward", create_forward), ("call_calc_forward", call_calc_forward),
                            ("call_work_forward", call_work_forward))
        if value is not None
    }

    def describe(found: set[int]) -> None:
        click.echo(f"{'Would delete' if dry_run else 'Deleting'} {len(found)} node(s).")
        if state.verbose and found:
            click.echo(f"pks: {format_pks(found)}")

    def confirm(found: set[int]) -> bool:
        describe(found)
        if not found:
            return True
        return not click.confirm(f"Delete these {len(found)} node(s)?", err=True)

    with state.progress() as progress:
        if dry_run:
            found, _ = delete_nodes(pks, dry_run=True, backend=backend, progress=progress, **rules)
            describe(found)
            return
        found, deleted = delete_nodes(pks, dry_run=False if force else confirm, backend=backend, progress=progress, **rules)
    if force:
        describe(found)
    if not deleted:
        fail("deletion cancelled; nothing was deleted")
    click.echo(f"Deleted {len(found)} node(s).")
