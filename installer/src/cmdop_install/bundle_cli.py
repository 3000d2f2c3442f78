"""cmdop-install bundle: make a signing key, build and verify the signed offline bundle."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cmdop_install import bundle

_key_path = click.Path(dir_okay=False, path_type=Path)


@click.group(name="bundle")
def bundle_group() -> None:
    """The signed offline bundle for air-gapped hosts: keygen, build, verify.

    \b
    Example:
      cmdop-install bundle build --out cmdop.bundle
    """


@bundle_group.command()
@click.option("--out", type=_key_path, default=None,
              help="Where to write the private key (default: "
                   "~/.config/cmdop-install/bundle-signing.key); the public key goes "
                   "beside it as <key>.pub.")
def keygen(out: Path | None) -> None:
    """Make the operator's Ed25519 signing key (0600) and its public key.

    Keep the private key apart from every site: whoever holds it can make your hosts
    install anything. Hosts and `deploy --bundle` only need the .pub file.

    \b
    Example:
      cmdop-install bundle keygen --out ~/.config/cmdop-install/bundle-signing.key
    """
    key = out or bundle.default_key_path()
    pub = bundle.keygen(key)
    click.echo(f"signing key: {key} (0600, keep it off the sites)")
    click.echo(f"public key:  {pub}")


@bundle_group.command()
@click.option("--out", "out", type=_key_path, required=True, help="The bundle file to write.")
@click.option("--signing-key", type=_key_path, default=None,
              help="The Ed25519 key from `bundle keygen` (default: "
                   "~/.config/cmdop-install/bundle-signing.key).")
@click.option("--centrifugo-binary", type=_key_path, default=None,
              help="A Centrifugo binary to carry along (optional).")
@click.option("--postgres-major", type=click.IntRange(13, 17), default=15, show_default=True,
              help="The PostgreSQL major the sites use ([postgres] major).")
def build(out: Path, signing_key: Path | None, centrifugo_binary: Path | None,
          postgres_major: int) -> None:
    """Build the offline bundle on a connected machine (Debian 12 amd64 hosts).

    It holds the wheels of cmdop-server and cmdop-agent with every dependency pinned by
    hash in uv.lock, every Debian package the hosts need with its dependency closure as a
    local apt repository, an SBOM, and a manifest of every file's SHA-256 signed with
    your key. Downloads are cached under ~/.cache/cmdop-install/: a rerun fetches nothing.

    \b
    Example:
      cmdop-install bundle build --out cmdop.bundle --signing-key ~/keys/bundle.key
    """
    from cmdop_install import bundle_build

    start = time.monotonic()
    manifest = bundle_build.build(out, signing_key or bundle.default_key_path(),
                                  centrifugo_binary, postgres_major, click.echo)
    size = out.stat().st_size
    click.echo(f"wrote {out}: {len(manifest['files'])} files, {size / 1e6:.1f} MB, "
               f"{time.monotonic() - start:.0f} s")


@bundle_group.command()
@click.argument("file", type=_key_path, metavar="FILE")
@click.option("--pubkey", type=_key_path, required=True,
              help="The signer's public key (<key>.pub from `bundle keygen`).")
def verify(file: Path, pubkey: Path) -> None:
    """Check FILE's signature and every file's SHA-256; refuse a missing, extra or changed file.

    \b
    Example:
      cmdop-install bundle verify cmdop.bundle --pubkey ~/keys/bundle.key.pub
    """
    checked = bundle.verify(file, pubkey)
    click.echo(f"{file}: signature and {len(checked.manifest['files'])} files verified "
               f"({checked.manifest['target']})")
