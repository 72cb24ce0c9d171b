"""``madrpc deploy``: ship a script to the grid, or roll back to the previous version.

The script (a ``.js`` file, or a folder with an ``index.js`` and what it requires) is
bundled and loaded in V8 here first, so a version that cannot load is refused on this
terminal with its file:line:column and never reaches the grid. Then the broker makes it
current and hands it to every worker started without ``--script``; the command waits
until they all run it, and prints the version id as the last line on stdout.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from .bundle import collect
from .cli_support import client_options, exit_130_on_ctrl_c, print_error
from .errors import MadrpcError, ScriptError

__all__ = ["DEPLOY_WAIT_S", "deploy_command"]

DEPLOY_WAIT_S = 60.0
"""How long ``deploy`` waits for the workers to run the new version."""
POLL_INTERVAL_S = 0.2
"""How often it looks while it waits."""


@click.command("deploy", short_help="Ship a script to the grid's workers (or --rollback).")
@click.argument("path", required=False, type=click.Path(exists=True))
@client_options
@click.option("--rollback", is_flag=True, help="Go back to the previous version.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until every worker without --script runs the new version.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=DEPLOY_WAIT_S,
              show_default=True, help="Seconds to wait for the workers.")
def deploy_command(path: str | None, rollback: bool, wait: bool, wait_timeout: float,
                   **connection: Any) -> None:
    """Make PATH (a .js file, or a folder with index.js) the grid's script.

    Workers started without --script run it and every later version; requests that are
    running finish on the version they started on. Needs an admin key when the broker
    has CURVE. The new version id (a content hash) is the last line on stdout.
    """
    if rollback == (path is not None):
        raise click.UsageError("give PATH to deploy, or --rollback (not both)")
    params: dict[str, Any]
    params = {"bundle": _checked_bundle(path)} if path is not None else {"rollback": True}
    from .client import Client

    with exit_130_on_ctrl_c():
        try:
            with Client(connection.pop("broker"), timeout=30.0, **connection) as client:
                outcome = client.call("_deploy", params)
                version = str(outcome["version"])
                if outcome.get("previous") == version:
                    click.echo(f"version {version} is already current", err=True)
                else:
                    click.echo(f"version {version} is current (was {outcome.get('previous')}); "
                               f"sent to {outcome.get('workers', 0)} workers", err=True)
                ok = not wait or _wait_for_workers(client, version, int(outcome.get("workers", 0)),
                                                   wait_timeout)
        except MadrpcError as exc:
            print_error(exc)
            sys.exit(1)
    click.echo(version)
    if not ok:
        sys.exit(1)


def _checked_bundle(path: str) -> dict[str, Any]:
    """The bundle of ``path`` after loading it in V8 here; exit 1 with the error when it
    does not load."""
    from .script_check import check_bundle

    try:
        bundle = collect(path)
        methods = check_bundle(bundle)
    except ScriptError as exc:
        click.echo(f"error: {exc}", err=True)
        click.echo("not deployed: the grid keeps its current version", err=True)
        sys.exit(1)
    shown = ", ".join(methods[:8]) + (", ..." if len(methods) > 8 else "")
    click.echo(f"{bundle.display(bundle.entry)}: {len(bundle.files)} files, "
               f"{bundle.size} bytes, {len(methods)} functions ({shown})", err=True)
    return {"entry": bundle.entry, "files": dict(bundle.files)}


def _wait_for_workers(client: Any, version: str, sent: int, timeout_s: float) -> bool:
    """Until every worker that runs the grid's script runs ``version`` (at least the
    ``sent`` the broker handed it to, which may still be starting): True; False (having
    said which did not, and why if they told) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    behind: list[dict[str, Any]] = []
    while True:
        workers = [w for w in client.call("_metrics")["workers"] if w.get("deployed")]
        behind = [w for w in workers if w.get("script_version") != version]
        failed = [w for w in behind if w.get("script_error")]
        if not behind and len(workers) >= sent:
            click.echo(f"{len(workers)} workers run version {version}", err=True)
            return True
        if failed or time.monotonic() >= deadline:
            for worker in behind:
                reason = worker.get("script_error") or "still starting"
                click.echo(f"worker {worker.get('id')} runs {worker.get('script_version')}: "
                           f"{reason}", err=True)
            if len(workers) < sent:
                click.echo(f"{sent - len(workers)} workers that were sent it have not "
                           "registered with it", err=True)
            return False
        time.sleep(POLL_INTERVAL_S)
