"""Our own pyinfra operations: read a fact when they run, yield commands only for the difference.

(pyinfra's pattern: ``postgres.role`` reads the roles fact and calls ``host.noop`` when the
role already matches.) The facts are typed (``deploys.facts``) and never fail a host: a
missing program reads as the fact's default. tests/installer/ops/<operation>/<case>.json
holds each operation's cases: facts and arguments in, commands or a no-op out.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import PurePosixPath
from typing import TypeVar

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.facts.deb import DebPackages

from cmdop_install import pgsql
from cmdop_install.deploys.facts import (
    DistributionVersion,
    ExistingPaths,
    InstallerState,
    IsExecutable,
    IsNonEmptyFile,
    LinkTarget,
    PathState,
    PathStates,
    PostgresValue,
    UnitActive,
    WheelhouseKey,
)

T = TypeVar("T")


def fact(cls: type[FactBase[T]], *args) -> T:
    """``cls``'s value on the current host, read as root."""
    return host.get_fact(cls, *args, _sudo=True)


def prefetch(cls: type[FactBase], *args) -> None:
    """Start reading ``fact(cls, *args)`` now, beside this host's other reads (for a slow
    one, e.g. a Django start); the runner's fact cache hands the value to whoever asks."""
    import gevent
    from pyinfra.context import ctx_host

    current = ctx_host.get()

    def warm() -> None:
        with ctx_host.use(current):
            try:
                fact(cls, *args)
            except Exception:  # noqa: BLE001, S110 - the operation reads it again and reports
                pass

    gevent.spawn(warm)


def upload(src: str, dest: str, temp_dir: str) -> FileUploadCommand:
    """Send ``src`` to ``dest`` through the SSH user's private folder (never the shared /tmp)."""
    return FileUploadCommand(
        src, dest, remote_temp_filename=host.get_temp_filename(dest, temp_directory=temp_dir)
    )


def secret_file_commands(src: str, dest: str, command: str, temp_dir: str, owner: str = "root"):
    """A secret as a file that exists 0600 (``owner``) before it has content, is used by
    ``command`` (which names it), and is removed whatever ``command`` does."""
    yield f"install -o {owner} -g {owner} -m 600 /dev/null {dest}"
    yield upload(src, dest, temp_dir)
    yield f"{command}; status=$?; rm -f {dest}; exit $status"


@operation()
def postgres_sql(
    check_sql: str, expected: str, commands: list[str], what: str = "state", force=None
):
    """Run ``commands`` unless ``check_sql`` (run by the postgres superuser) gives ``expected``;
    ``force()`` true (e.g. the SQL file changed) runs the commands anyway."""
    if fact(PostgresValue, check_sql) == expected and not (force and force()):
        host.noop(f"{what} is already as wanted")
        return
    yield from commands


@operation()
def postgres_restart_or_reload(service: str, listen_addresses: str, files_changed):
    """Restart when listen_addresses differs (read at start only), reload when files changed."""
    if fact(PostgresValue, "SHOW listen_addresses") != listen_addresses:
        yield f"systemctl restart {service}"
    elif files_changed():
        yield f"systemctl reload {service}"
    else:
        host.noop(f"{service} runs with the current files")


@operation()
def redis_users_loaded(users: str, loaded: str, acl_load: str, restarted):
    """The running Redis uses ``users`` (users.acl): ``acl_load`` (ACL LOAD, no restart) when
    the file differs from ``loaded``, the copy of what Redis last read, then the copy. So a
    deploy cut between writing the file and loading it is loaded by the next one; after a
    restart (which read the file) only the copy is made."""
    have = fact(PathStates, [users, loaded])
    current, last = have.get(users), have.get(loaded)
    if current is None or (last is not None and last.sha256 == current.sha256):
        host.noop("Redis runs with the current users.acl")
        return
    if not restarted():
        yield acl_load
    yield f"install -o root -g root -m 600 {users} {loaded}"


@operation()
def redis_tls_loaded(files: list[str], loaded: str, reload: str, restarted):
    """The running Redis serves ``files`` (its certificate, key and CA bundle): ``reload``
    (CONFIG SET of the same paths, which Redis reads anew for new connections; the open
    ones go on) when they differ from ``loaded``, their sha256sum when Redis last read
    them. So a deploy cut between writing them and the reload is reloaded by the next one;
    after a restart (which read them) only the record is made."""
    have = fact(PathStates, [*files, loaded])
    if not all(f in have for f in files):
        host.noop("Redis has no certificate files yet")
        return
    served = "".join(f"{have[f].sha256}  {f}\n" for f in files)
    record = have.get(loaded)
    if record is not None and record.sha256 == hashlib.sha256(served.encode()).hexdigest():
        host.noop("Redis serves the current certificate files")
        return
    if not restarted():
        yield reload
    yield f"(umask 077; sha256sum {' '.join(files)} > {loaded}.tmp) && mv {loaded}.tmp {loaded}"


@operation()
def postgres_password(
    role: str, verifier_md5: str, sql_src: str, conf_dir: str, temp_dir: str, psql: str
):
    """Set ``role``'s password from a file holding ``ALTER ROLE … PASSWORD '<SCRAM verifier>'``.

    Only when the stored verifier differs (compared by md5, so it never travels back). The
    file exists 0600 postgres-owned before it has content, and is removed right after use.
    """
    if fact(PostgresValue, pgsql.password_md5(role)) == verifier_md5:
        host.noop(f"password of {role} is already set")
        return
    sql_file = f"{conf_dir}/.cmdop-password-{role}.sql"
    yield from secret_file_commands(
        sql_src, sql_file, f"{psql} -f {sql_file}", temp_dir, owner="postgres"
    )


@operation()
def server_release(root: str, wheelhouse: dict, temp_dir: str):
    """The cmdop-server release built from ``wheelhouse``: ``root/releases/<key>/venv``,
    installed beside the release serving and not switched to (``server_switch`` does that
    once the migrations have run with it). A marker file records the key, so a release
    already installed is a no-op.
    """
    key = wheelhouse["key"]
    venv = f"{root}/releases/{key}/venv"
    if fact(WheelhouseKey, venv) == key:
        host.noop(f"cmdop-server release {key} is installed")
        return
    yield f"rm -rf {root}/releases/{key}"
    yield from venv_commands(venv, wheelhouse, temp_dir)


# Debian's pip wheel (python3-pip-whl, which python3-venv depends on), run from the wheel
PIP_WHEEL = '"$(echo /usr/share/python-wheels/pip-*.whl)/pip"'
# pip install from the wheelhouse alone: --no-index drops the index, but links named in a pip
# configuration (/etc/pip.conf, the user's, the venv's) or in PIP_* variables are still
# fetched beside --find-links; no configuration file and --isolated (no PIP_*) leave none
PIP_INSTALL = "PIP_CONFIG_FILE=/dev/null {python} install --isolated --quiet --no-index"


def venv_commands(venv: str, wheelhouse: dict, temp_dir: str, with_pip: bool = True):
    """``venv`` (made afresh) with the wheelhouse installed. ``with_pip`` false (the agent,
    standard library only): a venv without pip, and Debian's pip wheel installs the package
    and its requirements in one run; ensurepip copying pip into every release cost each host
    more than the rest of an agent upgrade."""
    wheels = f"{venv.rsplit('/', 1)[0]}/wheels/{wheelhouse['key']}"
    yield f"install -d -m 755 {wheels}"
    for name in wheelhouse["files"]:
        dest = f"{wheels}/{name}"
        yield upload(f"{wheelhouse['path']}/{name}", dest, temp_dir)
    package = f"{wheels}/{wheelhouse['package_wheel']}"
    if with_pip:
        yield f"test -x {venv}/bin/python || python3 -m venv {venv}"
        pip = f"{PIP_INSTALL.format(python=f'{venv}/bin/python -m pip')} --find-links {wheels}"
        yield f"{pip} --upgrade -r {wheels}/requirements.txt"
        # our own wheel keeps its version between builds: reinstall it, always
        yield f"{pip} --no-deps --force-reinstall {package}"
    else:
        yield f"test -x {venv}/bin/python || python3 -m venv --without-pip {venv}"
        yield (f"{PIP_INSTALL.format(python=f'{venv}/bin/python {PIP_WHEEL}')} "
               f"--find-links {wheels} -r {wheels}/requirements.txt {package}")
    yield f"echo {wheelhouse['key']} > {venv}/.cmdop-wheelhouse"
    # keep only the wheelhouse in use
    parent = f"{wheels}/.."
    yield f"find {parent} -mindepth 1 -maxdepth 1 ! -name {wheelhouse['key']} -exec rm -rf {{}} +"


def relink(link: str, target: str) -> str:
    """Point ``link`` at ``target`` atomically: a new link renamed over the old one."""
    return f"ln -sfn {target} {link}.new && mv -T {link}.new {link}"


@operation()
def server_switch(root: str, key: str, service: str, socket: str, gunicorn: str, restart,
                  replaces: list[str]):
    """``root/current`` pointed at release ``key``, and the service moved onto it.

    A HUP (``systemctl reload-or-restart``): gunicorn starts new workers, which import the
    code through ``current``, and lets the old ones finish their requests, so none fails. A
    restart instead (``restart_commands``) when ``restart()`` (the unit changed), on the first
    switch, or when the release brings another gunicorn (``gunicorn``: its version): the
    master a HUP keeps must run the workers' gunicorn. The release replaced stays as
    ``previous``, any other is removed, and ``replaces`` (the layout before releases) once
    the first switch is done.
    """
    current = fact(LinkTarget, f"{root}/current")
    target = f"{root}/releases/{key}"
    if current == target:
        host.noop(f"cmdop-server release {key} is current")
        return
    same_gunicorn = fact(DistributionVersion, f"{root}/current/venv", "gunicorn") == gunicorn
    keep = [key]
    if current:
        yield relink(f"{root}/previous", current)
        keep.append(current.rsplit("/", 1)[-1])
    yield relink(f"{root}/current", target)
    if current and same_gunicorn and not restart():
        yield f"systemctl reload-or-restart {service}"
    else:
        yield from restart_commands(service, socket)
    spare = " ".join(f"! -name {shlex.quote(k)}" for k in keep)
    yield f"find {root}/releases -mindepth 1 -maxdepth 1 {spare} -exec rm -rf {{}} +"
    if not current and replaces:
        yield f"rm -rf {' '.join(replaces)}"


def restart_commands(service: str, socket: str):
    """Restart ``service`` with its listening socket held by ``socket`` (a systemd socket
    unit): while the socket is up, requests wait in its backlog for the new master.

    systemd refuses to start a socket unit while its service runs, so a service started
    before the socket unit existed (a site deployed before it) is stopped first, quickly
    (SIGQUIT: its in-flight requests end, rather than new ones failing for as long as its
    agents' long-polls would hold a graceful stop), then both start.
    """
    if fact(UnitActive, socket):
        yield f"systemctl restart {service}"
        return
    start = f"systemctl start {socket} {service}"
    if fact(UnitActive, service):
        # one remote command: requests fail from the old master's exit until the socket
        # binds, so no SSH round trip in between
        yield (f"systemctl kill --kill-who=main --signal=SIGQUIT {service}; "
               f"systemctl stop {service} && {start}")
        return
    yield start


@operation()
def server_restart(service: str, socket: str):
    """``restart_commands`` (new unit files, no new release) when ``service`` runs; one that
    does not is started with its socket afterwards anyway."""
    if not fact(UnitActive, service):
        host.noop(f"{service} is not running")
        return
    yield from restart_commands(service, socket)


@operation()
def agent_release(root: str, version: str, wheelhouse: dict, temp_dir: str, switch: bool):
    """The agent's code: ``root/releases/<version>/venv``, run through ``root/current``.

    A deploy (``switch`` false) installs ``version`` only where no agent is installed yet:
    on a host that has one, the version belongs to ``agents rollout``. A rollout (``switch``
    true) installs ``version`` if it is missing or was built differently, points
    ``root/previous`` at the release it replaces and swaps ``root/current`` atomically
    (``mv -T`` of a new link). Releases other than current and previous are removed.
    """
    current = fact(LinkTarget, f"{root}/current")
    target = f"{root}/releases/{version}"
    if current and not switch:
        host.noop(f"agent {current.rsplit('/', 1)[-1]} installed (`agents rollout` upgrades it)")
        return
    built = fact(WheelhouseKey, f"{target}/venv") == wheelhouse["key"]
    if current == target and built:
        host.noop(f"agent {version} is current")
        return
    if not built:
        yield f"rm -rf {target}"
        yield from venv_commands(f"{target}/venv", wheelhouse, temp_dir, with_pip=False)
    keep = [version]
    if current and current != target:
        yield relink(f"{root}/previous", current)
        keep.append(current.rsplit("/", 1)[-1])
    yield relink(f"{root}/current", target)
    spare = " ".join(f"! -name {shlex.quote(k)}" for k in keep)
    yield f"find {root}/releases -mindepth 1 -maxdepth 1 {spare} -exec rm -rf {{}} +"


@operation()
def agent_rollback(root: str, version: str):
    """Point ``root/current`` back at release ``version`` (the one a rollout replaced)."""
    target = f"{root}/releases/{version}"
    if fact(LinkTarget, f"{root}/current") == target:
        host.noop(f"agent {version} is current")
        return
    if not fact(IsExecutable, f"{target}/venv/bin/cmdop-agent"):
        yield f"echo 'agent release {version} is no longer on this host' >&2; exit 1"
        return
    yield relink(f"{root}/current", target)


@operation()
def enroll_agent(
    user: str, venv: str, config: str, credential: str, token_src: str | None, temp_dir: str
):
    """``cmdop-agent enroll`` unless ``credential`` exists; the token goes in on stdin."""
    if fact(IsNonEmptyFile, credential):
        host.noop("the agent is enrolled")
        return
    if token_src is None:
        host.noop("not enrolled and no join token for this host (is the control plane up?)")
        return
    token_file = f"{temp_dir}/join-token"
    enroll = f"runuser -u {user} -- {venv}/bin/cmdop-agent --config {config} enroll --token -"
    yield from secret_file_commands(token_src, token_file, f"{enroll} < {token_file}", temp_dir)


@operation()
def control_plane_database(
    state_command: str, migrate: str, bootstrap: str, secret_src: str, temp_dir: str
):
    """``migrate`` (both databases, all or nothing) when either has pending migrations, then
    the first Owner if the workspace does not exist; one Django start (``installer_state``)
    decides all of it.

    The Owner's password goes to ``bootstrap`` on stdin from a 0600 file in the SSH user's
    private folder, removed right after.
    """
    state = fact(InstallerState, state_command)
    todo = False
    if state.get("default") != "current" or state.get("audit") != "current":
        todo = True
        yield migrate
    if state.get("owner") != "present":
        todo = True
        secret_file = f"{temp_dir}/stdin-secret"
        yield from secret_file_commands(
            secret_src, secret_file, f"{bootstrap} < {secret_file}", temp_dir
        )
    if not todo:
        host.noop("databases current, owner present")


@operation()
def absent(paths: list[str]):
    """None of ``paths`` exists afterwards; one remote command finds those that do."""
    shallow = [p for p in paths if not p.startswith("/") or len(PurePosixPath(p).parts) < 3]
    if shallow:  # a bug upstream, never a reason to remove /etc or /opt
        raise ValueError(f"refusing to remove {shallow}")
    present = fact(ExistingPaths, paths)
    if not present:
        host.noop(f"none of {len(paths)} path(s) exists")
        return
    yield "rm -rf -- " + " ".join(shlex.quote(p) for p in present)


@operation()
def folder(path: str, owner: str, group: str, mode: str, known: list[str]):
    """A folder with this owner, group and mode (read from the host's shared listing of
    ``known`` paths, which includes ``path``)."""
    have = fact(PathStates, known if path in known else [path]).get(path)
    quoted = shlex.quote(path)
    if have is None:
        yield f"install -d -o {owner} -g {group} -m {mode} {quoted}"
    elif have.kind != "dir":
        yield f"echo {shlex.quote(f'not a folder (move it away, then rerun): {path}')} >&2; exit 1"
    elif not has_owner_and_mode(have, owner, group, mode):
        yield f"chown {owner}:{group} {quoted} && chmod {mode} {quoted}"
    else:
        host.noop(f"{path} is as wanted")


@operation()
def sync_files(files: list[dict], temp_dir: str, known: list[str]):
    """Make each file's content, mode, owner and group what ``files`` says.

    ``PathStates`` reads the sha256, mode, owner and group of every path (``known``: all
    of the host's, one command for the host). A file whose content differs is first
    (re)created empty with its final owner and mode, then filled: ``cp`` onto an existing
    file keeps both, so a secret is never readable by anyone else, not even for a moment.
    """
    current = fact(PathStates, known)
    odd = [f["path"] for f in files if f["path"] in current and current[f["path"]].kind != "file"]
    if odd:
        # a folder or link where our file belongs: someone else's, never written through
        why = "not a regular file (move it away, then rerun): " + ", ".join(odd)
        yield f"echo {shlex.quote(why)} >&2; exit 1"
        return
    changed = 0
    for f in files:
        with open(f["src"], "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        have = current.get(f["path"])
        path = shlex.quote(f["path"])
        if have is None or have.sha256 != digest:
            yield f"install -o {f['owner']} -g {f['group']} -m {f['mode']} /dev/null {path}"
            yield upload(f["src"], f["path"], temp_dir)
            changed += 1
        elif not has_owner_and_mode(have, f["owner"], f["group"], f["mode"]):
            yield f"chown {f['owner']}:{f['group']} {path} && chmod {f['mode']} {path}"
            changed += 1
    if not changed:
        host.noop(f"{len(files)} file(s) already as rendered")


def has_owner_and_mode(have: PathState, user: str, group: str, mode: str) -> bool:
    """``mode`` as we write it ("0640", "750") against stat's octal ("640")."""
    return (have.user, have.group, have.mode) == (user, group, mode.lstrip("0") or "0")


BUNDLE_ROOT = "/var/lib/cmdop-install/bundle"


def bundle_folder(bundle: dict) -> str:
    return f"{BUNDLE_ROOT}/{bundle['digest'][:16]}"


def bundle_apt_command(bundle: dict) -> str:
    """apt-get reading the verified bundle's repository and nothing else: no sources.list,
    no sources.list.d, its own lists (a package the bundle lacks stops apt, naming it)."""
    here = bundle_folder(bundle)
    return (
        f"apt-get -q -y --no-install-recommends -o Dir::Etc::sourcelist={here}/sources.list "
        f"-o Dir::Etc::sourceparts=- -o Dir::State::Lists={here}/lists "
        "-o Acquire::Languages=none"
    )


def bundle_install_command(bundle: dict) -> str:
    """``bundle_apt_command`` installing the package names that follow; as pyinfra's
    apt.packages it keeps a config file changed on the host and never asks (run it with
    DEBIAN_FRONTEND=noninteractive)."""
    return (f"{bundle_apt_command(bundle)} -o Dpkg::Options::=--force-confdef "
            "-o Dpkg::Options::=--force-confold install")


def bundle_prepare_command(bundle: dict) -> str:
    """An empty folder for the bundle: what ``bundle_check_commands`` read is copied into it
    as manifest.json, SHA256SUMS and bundle.tar."""
    here = bundle_folder(bundle)
    return f"rm -rf {here} && install -d -m 755 {here} {here}/files {here}/lists/partial"


def bundle_check_commands(bundle: dict) -> list[str]:
    """On the host, after the copies: the received files checked against the signed manifest
    (its digest, every file's SHA-256, nothing extra), then apt's source written and the
    digest recorded as verified. The Ansible roles run the same lines (export-ansible)."""
    here = bundle_folder(bundle)
    return [
        f"echo '{bundle['digest']}  {here}/manifest.json' | sha256sum --quiet --strict -c"
        " || { echo 'bundle: manifest.json is not the signed one' >&2; exit 1; }",
        f"tar -xf {here}/bundle.tar -C {here}/files --no-same-owner --no-same-permissions "
        f"--exclude=manifest.json --exclude=manifest.json.sig && rm -f {here}/bundle.tar",
        f"cd {here}/files && sha256sum --quiet --strict -c ../SHA256SUMS",
        f"test \"$(find {here}/files -type f | wc -l)\" -eq {bundle['count']} || "
        "{ echo 'bundle: files not in the signed manifest' >&2; exit 1; }",
        # trusted=yes: the repository's Packages and every .deb were just checked against the
        # signed manifest; apt has no other key to check them with.
        f"echo 'deb [trusted=yes] file:{here}/files/debs ./' > {here}/sources.list",
        f"echo {bundle['digest']} > {here}/verified",
        f"find {BUNDLE_ROOT} -mindepth 1 -maxdepth 1 ! -name {bundle['digest'][:16]} "
        "-exec rm -rf {} +",
    ]


@operation()
def bundle_repository(bundle: dict, temp_dir: str):
    """The offline bundle unpacked in ``BUNDLE_ROOT/<digest>/files`` and checked against its
    signed manifest before apt may trust it.

    The installer verified the signature before any host was touched; here the host checks
    what it received (``sha256sum -c`` of every file, nothing extra) and only then writes
    the ``[trusted=yes]`` source. That source lives beside the bundle, not in /etc/apt:
    only ``bundle_packages`` reads it, with apt's own sources and lists switched off.

    ``bundle``: ``digest`` (SHA-256 of the signed manifest.json), ``path`` (the bundle on this
    machine), ``manifest`` and ``sums`` (local files: the manifest and its ``sha256sum``
    lines), ``count`` (files the manifest lists). A host that already verified this digest
    is a no-op; another bundle's folder is removed.
    """
    here = bundle_folder(bundle)
    if fact(IsNonEmptyFile, f"{here}/verified"):
        host.noop(f"bundle {bundle['digest'][:16]} verified")
        return
    yield bundle_prepare_command(bundle)
    yield upload(bundle["manifest"], f"{here}/manifest.json", temp_dir)
    yield upload(bundle["sums"], f"{here}/SHA256SUMS", temp_dir)
    yield upload(bundle["path"], f"{here}/bundle.tar", temp_dir)
    yield from bundle_check_commands(bundle)


@operation()
def bundle_packages(names: list[str], bundle: dict):
    """``names`` installed from the verified bundle only; a no-op when all are installed."""
    installed = fact(DebPackages) or {}
    missing = [n for n in names if n not in installed]
    if not missing:
        host.noop(f"{' '.join(names)} installed")
        return
    yield f"{bundle_apt_command(bundle)} update"
    yield f"DEBIAN_FRONTEND=noninteractive {bundle_install_command(bundle)} {' '.join(missing)}"
