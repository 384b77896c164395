"""API keys: create (shown once), list, revoke; a name's callback URL and secret."""

from __future__ import annotations

import click

from cli.context import CliContext, domain_errors_shown, pass_cli


@click.group()
def keys() -> None:
    """API keys (stored only as hashes)."""


@keys.command("create")
@click.option("--name", required=True, help="The client; keys of one name share its jobs.")
@click.option(
    "--scope",
    required=True,
    type=click.Choice(["read", "submit", "review", "admin"]),
    help="read: its own jobs; submit: and send jobs; review: every job, and confirm labels; "
    "admin: everything.",
)
@click.option(
    "--priority",
    type=click.Choice(["routine", "stat"]),
    default="routine",
    show_default=True,
    help="The priority of this key's jobs when a submission does not give one.",
)
@pass_cli
def keys_create(cli: CliContext, name: str, scope: str, priority: str) -> None:
    """Create a key and print it once: it cannot be shown again."""
    from core.keys import create_key
    from core.models import Priority

    with domain_errors_shown(), cli.db.session() as session:
        row, secret = create_key(session, name, scope, Priority(priority))
        prefix = row.prefix
    click.echo(f"created {scope} key {prefix}... for {name!r}; it is shown only now:", err=True)
    click.echo(secret)


@keys.command("list")
@pass_cli
def keys_list(cli: CliContext) -> None:
    """Keys by prefix, name and scope (never the keys themselves)."""
    from core.keys import list_keys

    with cli.db.session() as session:
        click.echo(f"{'PREFIX':<14} {'SCOPE':<7} {'PRIORITY':<9} {'STATUS':<8} NAME")
        for row in list_keys(session):
            status = "revoked" if row.revoked_at else "active"
            click.echo(f"{row.prefix:<14} {row.scope:<7} {row.priority:<9} {status:<8} {row.name}")


@keys.command("revoke")
@click.argument("prefix")
@pass_cli
def keys_revoke(cli: CliContext, prefix: str) -> None:
    """Revoke the key starting with PREFIX (as `keys list` shows it)."""
    from core.keys import revoke_key

    with domain_errors_shown(), cli.db.session() as session:
        row = revoke_key(session, prefix)
        click.echo(f"revoked {row.prefix}... ({row.name}, {row.scope})")


@keys.command("callback")
@click.option("--name", required=True, help="The key name (a DICOM peer's name too).")
@click.option("--url", default=None, help="Where every job of the name reports when it ends.")
@click.option("--rotate", is_flag=True, help="Make a new signing secret (the old one stops).")
@pass_cli
def keys_callback(cli: CliContext, name: str, url: str | None, rotate: bool) -> None:
    """Set a name's default callback URL; its signing secret is printed once, when made."""
    from core.callbacks import set_callback

    if url is not None and not url.startswith(("http://", "https://")):
        raise click.BadParameter("an http:// or https:// URL", param_hint="--url")
    with cli.db.session() as session:
        _, made = set_callback(session, name, url, rotate)
    click.echo(f"callbacks of {name!r}: {url or 'only URLs given on submit'}", err=True)
    if made:
        click.echo("the signing secret (HMAC-SHA256), shown only now:", err=True)
        click.echo(made)
