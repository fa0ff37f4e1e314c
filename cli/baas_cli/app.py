"""``baas``: the command line. Exit status 0 when done, 1 when the server refused (its
message printed), 2 on a local error (usage, files, the network)."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import sys
from typing import Annotated, Any

import typer

try:  # typer 0.2x carries its own copy of click, whose usage errors it raises
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - an older typer, on click itself
    from click import ClickException  # type: ignore[assignment]

from baas_cli import config, output
from baas_cli.client import Api
from baas_cli.errors import LOCAL, ApiError, CliError, LocalError

app = typer.Typer(
    name="baas",
    help="The command-line client of BAAS: images, setups, machines, leases, deployments.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


class Session:
    profile_name: str | None = None

    @classmethod
    def profile(cls) -> config.Profile:
        return config.load(cls.profile_name)

    @classmethod
    def api(cls, *, need_token: bool = True) -> Api:
        return Api(cls.profile(), need_token=need_token)


@app.callback()
def _root(
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            help="Which saved login to use (default: BAAS_PROFILE or 'default').",
            show_default=False,
        ),
    ] = None,
) -> None:
    Session.profile_name = profile


# --- Logging in --------------------------------------------------------------------------


def _read_password(username: str, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    try:
        return getpass.getpass(f"Password of {username}: ")
    except (EOFError, KeyboardInterrupt) as exc:
        raise LocalError("No password given.") from exc


@app.command()
def login(
    url: Annotated[str | None, typer.Argument(help="The BAAS, e.g. https://baas.example")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Your username")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    name: Annotated[str | None, typer.Option(help="The token's name")] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="read, write, admin (repeat it); default: all three, "
            "as logout and `baas token` need admin",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Sign in: make a named token with your password and keep it (0600) in the profile."""
    profile = Session.profile()
    profile.url = (url or profile.url or "").rstrip("/")
    if not profile.url:
        raise LocalError("Which BAAS? Give its URL: baas login https://baas.example")
    username = user or profile.username or os.environ.get("USER") or ""
    if not username:
        username = typer.prompt("Username")
    password = _read_password(username, password_stdin)
    api = Api(config.Profile(name=profile.name, url=profile.url), need_token=False)
    token_name = name or f"baas-cli on {socket.gethostname()}"
    body = {
        "username": username,
        "password": password,
        "name": token_name,
        "scopes": scope or ["read", "write", "admin"],
    }
    created = api.post("/api/auth/token", body)
    previous = (profile.token_id, profile.username) if profile.token and profile.url else None
    profile.token, profile.token_id, profile.username = created["token"], created["id"], username
    path = config.save(profile)
    _revoke_previous(profile, previous)
    shown = {k: v for k, v in created.items() if k != "token"}
    output.done(
        f"Logged in to {profile.url} as {username} (token {token_name!r}, profile "
        f"{profile.name!r}, kept in {path}).",
        {**shown, "url": profile.url, "username": username, "profile": profile.name},
        as_json,
    )


def _revoke_previous(profile: config.Profile, previous: tuple[int | None, str] | None) -> None:
    """A second login to the same profile revokes the token it replaces, when it can."""
    if previous is None or previous[0] is None or previous[0] == profile.token_id:
        return
    token_id, username = previous
    with contextlib.suppress(CliError):  # gone already, or not this user's: nothing to do
        Api(profile).delete(f"/api/user/{username}/tokens/{token_id}")


@app.command()
def logout(as_json: Json = False) -> None:
    """Revoke the profile's token on the server and forget it here."""
    profile = Session.profile()
    revoked = False
    if profile.url and profile.token and profile.token_id is not None:
        api = Session.api()
        try:
            api.delete(f"/api/user/{profile.username}/tokens/{profile.token_id}")
            revoked = True
        except ApiError as exc:
            if exc.status != 401:  # 401: already revoked or expired
                raise
    path = config.forget(profile.name)
    output.done(
        f"Logged out of {profile.url or 'nothing'}"
        + (" (the token is revoked)." if revoked else f"; profile {profile.name!r} removed."),
        {"profile": profile.name, "revoked": revoked, "config": str(path)},
        as_json,
    )


@app.command()
def whoami(as_json: Json = False) -> None:
    """Who the token belongs to, on which BAAS."""
    api = Session.api()
    me = api.me()
    data = {**me, "url": api.profile.url, "profile": api.profile.name}
    output.show(
        data,
        as_json,
        lambda: output.fields(data, ["username", "name", "email", "role", "url", "profile"]),
    )


# --- Leases and deploying ---------------------------------------------------------------


def _register() -> None:
    from baas_cli import fleet, images

    app.add_typer(images.app, name="image")
    app.add_typer(fleet.setup_app, name="setup")
    app.add_typer(fleet.machine_app, name="machine")
    app.add_typer(fleet.lease_app, name="lease")
    app.add_typer(fleet.deployment_app, name="deployment")
    app.add_typer(fleet.token_app, name="token")
    app.command("deploy")(fleet.deploy)


def main(argv: list[str] | None = None) -> int:
    """Every command, through typer (``baas_cli.entry`` runs a plain push before it)."""
    _register()
    try:
        app(args=argv, standalone_mode=False, prog_name="baas")
    except CliError as exc:
        output.errors.print(f"baas: {exc}", markup=False, highlight=False)
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code)
    except ClickException as exc:
        exc.show()
        return LOCAL
    except typer.Abort:
        output.errors.print("baas: interrupted")
        return LOCAL
    except OSError as exc:
        output.errors.print(f"baas: {exc}", markup=False, highlight=False)
        return LOCAL
    except KeyboardInterrupt:
        output.errors.print("baas: interrupted")
        return 130
    return _exit_code()


_EXIT: dict[str, Any] = {"code": 0}


def set_exit(code: int) -> None:
    """A command that finished but must end with another status (a failed deployment)."""
    _EXIT["code"] = code


def _exit_code() -> int:
    return int(_EXIT["code"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
