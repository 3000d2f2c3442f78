"""Our own pyinfra operations: read a fact when they run, yield commands only for the difference.

(pyinfra's pattern: ``postgres.role`` reads the roles fact and calls ``host.noop`` when the
role already matches.) Facts here never fail a host: a missing program reads as "".
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.facts.server import Command


def read(command: str) -> str:
    """Output of ``command`` run as root, "" when it fails (e.g. not installed yet)."""
    out = host.get_fact(Command, f"{command} 2>/dev/null || true", _sudo=True)
    return (out or "").strip()


def psql_value(sql: str) -> str:
    return read(f"runuser -u postgres -- psql -X -tA -c {shlex.quote(sql)}")


@operation()
def converge(check: str, expected: str, commands: list[str], what: str = "state"):
    """Run ``commands`` unless ``check`` (shell, run as root) already prints ``expected``."""
    if read(check) == expected:
        host.noop(f"{what} is already as wanted")
        return
    yield from commands


@operation()
def postgres_sql(
    check_sql: str, expected: str, commands: list[str], what: str = "state", force=None
):
    """Like ``converge``, the check being a query run by the postgres superuser;
    ``force()`` true (e.g. the SQL file changed) runs the commands anyway."""
    if psql_value(check_sql) == expected and not (force and force()):
        host.noop(f"{what} is already as wanted")
        return
    yield from commands


@operation()
def postgres_restart_or_reload(service: str, listen_addresses: str, files_changed):
    """Restart when listen_addresses differs (read at start only), reload when files changed."""
    if psql_value("SHOW listen_addresses") != listen_addresses:
        yield f"systemctl restart {service}"
    elif files_changed():
        yield f"systemctl reload {service}"
    else:
        host.noop(f"{service} runs with the current files")


@operation()
def postgres_password(
    role: str, verifier_md5: str, sql_src: str, conf_dir: str, temp_dir: str, psql: str
):
    """Set ``role``'s password from a file holding ``ALTER ROLE … PASSWORD '<SCRAM verifier>'``.

    Only when the stored verifier differs (compared by md5, so it never travels back). The
    file exists 0600 postgres-owned before it has content, and is removed right after use.
    """
    # role names are validated SQL identifiers (site.toml schema)
    check = f"SELECT md5(rolpassword) FROM pg_authid WHERE rolname = '{role}'"  # noqa: S608
    if psql_value(check) == verifier_md5:
        host.noop(f"password of {role} is already set")
        return
    sql_file = f"{conf_dir}/.cmdop-password-{role}.sql"
    yield f"install -o postgres -g postgres -m 600 /dev/null {sql_file}"
    yield FileUploadCommand(
        sql_src,
        sql_file,
        remote_temp_filename=host.get_temp_filename(sql_file, temp_directory=temp_dir),
    )
    yield f"{psql} -f {sql_file}; status=$?; rm -f {sql_file}; exit $status"


@operation()
def python_venv(venv: str, wheelhouse: dict, temp_dir: str):
    """A virtualenv at ``venv`` holding exactly the wheelhouse ``wheelhouse["key"]``.

    The wheels are uploaded to ``<venv>/../wheels/<key>/`` and installed with
    ``--no-index``: the host never reaches a package index. A marker file records the key,
    so an unchanged wheelhouse is a no-op.
    """
    marker = f"{venv}/.cmdop-wheelhouse"
    if read(f"cat {marker}") == wheelhouse["key"]:
        host.noop(f"{venv} has wheelhouse {wheelhouse['key']}")
        return
    wheels = f"{venv.rsplit('/', 1)[0]}/wheels/{wheelhouse['key']}"
    yield f"install -d -m 755 {wheels}"
    for name in wheelhouse["files"]:
        dest = f"{wheels}/{name}"
        yield FileUploadCommand(
            f"{wheelhouse['path']}/{name}",
            dest,
            remote_temp_filename=host.get_temp_filename(dest, temp_directory=temp_dir),
        )
    yield f"test -x {venv}/bin/python || python3 -m venv {venv}"
    pip = f"{venv}/bin/python -m pip install --quiet --no-index --find-links {wheels}"
    yield f"{pip} --upgrade -r {wheels}/requirements.txt"
    # our own wheel keeps its version between builds: reinstall it, always
    yield f"{pip} --no-deps --force-reinstall {wheels}/{wheelhouse['package_wheel']}"
    yield f"echo {wheelhouse['key']} > {marker}"
    # keep only the wheelhouse in use
    parent = f"{wheels}/.."
    yield f"find {parent} -mindepth 1 -maxdepth 1 ! -name {wheelhouse['key']} -exec rm -rf {{}} +"


@operation()
def managed_command(check: str, expected: str, command: str, what: str):
    """``command`` unless ``check`` prints ``expected`` (both run as root)."""
    if read(check) == expected:
        host.noop(f"{what}: nothing to do")
        return
    yield command


@operation()
def enroll_agent(
    user: str, venv: str, config: str, credential: str, token_src: str | None, temp_dir: str
):
    """``cmdop-agent enroll`` unless ``credential`` exists; the token goes in on stdin."""
    if read(f"test -s {credential} && echo enrolled") == "enrolled":
        host.noop("the agent is enrolled")
        return
    if token_src is None:
        host.noop("not enrolled and no join token for this host (is the control plane up?)")
        return
    token_file = f"{temp_dir}/join-token"
    yield f"install -m 600 /dev/null {token_file}"
    yield FileUploadCommand(
        token_src,
        token_file,
        remote_temp_filename=host.get_temp_filename(token_file, temp_directory=temp_dir),
    )
    yield (
        f"runuser -u {user} -- {venv}/bin/cmdop-agent --config {config} enroll --token - "
        f"< {token_file}; status=$?; rm -f {token_file}; exit $status"
    )


@operation()
def command_with_secret_stdin(
    check: str, expected: str, command: str, secret_src: str, temp_dir: str, what: str
):
    """``command < secret`` unless ``check`` prints ``expected``; the secret travels as a
    0600 file in the SSH user's private folder and is removed right after."""
    if read(check) == expected:
        host.noop(f"{what}: nothing to do")
        return
    secret_file = f"{temp_dir}/stdin-secret"
    yield f"install -m 600 /dev/null {secret_file}"
    yield FileUploadCommand(
        secret_src,
        secret_file,
        remote_temp_filename=host.get_temp_filename(secret_file, temp_directory=temp_dir),
    )
    yield f"{command} < {secret_file}; status=$?; rm -f {secret_file}; exit $status"
