"""A site folder loaded once: operator config, inventory, secrets, PKI and rendered files.

Each command loads its site with ``SiteDir.load`` and hands the value down to the modules
it calls. The secrets store, the PKI and every host's rendered files are read on first use
and kept, so ``deploy`` (check, then payload) or a rollout (one deploy per batch) never
re-read or re-render what an earlier step already has.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from cmdop_install import pki, rotation_state
from cmdop_install.inventory import Inventory, load_inventory
from cmdop_install.render import PemFiles, RenderedFile, render_host
from cmdop_install.secrets import SecretStore
from cmdop_install.site import Site, load_site


class SiteDir:
    def __init__(self, path: Path, config: Site, inventory: Inventory | None = None) -> None:
        self.path = Path(path)
        self.config = config
        self._inventory = inventory
        self._pem: PemFiles | None = None
        self._files: dict[str, list[RenderedFile]] = {}
        self._completed = False
        self.issued: list[str] = []  # leaf certificates issued by this load
        self.generated: list[str] = []  # secrets this load generated (names, never values)

    @classmethod
    def load(cls, path: Path) -> SiteDir:
        """site.toml (a failure is one line); the rest is read on first use."""
        path = Path(path)
        config = load_site(path)
        rotation_state.apply_active_role(path, config)
        return cls(path, config)

    @property
    def inventory(self) -> Inventory:
        """inventory.py, run once (``secrets`` commands never need it, so never run it)."""
        if self._inventory is None:
            self._inventory = load_inventory(self.path)
        return self._inventory

    @property
    def name(self) -> str:
        return self.config["site"]["name"]

    @cached_property
    def store(self) -> SecretStore:
        return SecretStore.open(self.path, self.config["site"]["key_file"])

    @cached_property
    def secrets(self) -> dict[str, str]:
        """Every secret by name, for rendering. Never print it."""
        return self.store.values(rotation_state.admitted(self.path))

    def secrets_changed(self) -> None:
        """The store or pki/ changed (a rotation phase): render from the new values and
        certificates from now on."""
        self.__dict__.pop("secrets", None)
        self._pem = None
        self._files.clear()

    @property
    def pem(self) -> PemFiles:
        if self._pem is None:
            self._pem = PemFiles(self.path, self.store.pki_passphrase(),
                                 rotation_state.ca_admitted(self.path))
        return self._pem

    def files(self, host_name: str) -> list[RenderedFile]:
        """Every file ``host_name`` receives, rendered once per load."""
        if host_name not in self._files:
            self._files[host_name] = render_host(
                self.config, self.inventory, host_name, self.secrets, self.pem
            )
        return self._files[host_name]

    def rendered(self, host_name: str) -> list[RenderedFile] | None:
        """The files of ``host_name`` if this load rendered them already (``files``)."""
        return self._files.get(host_name)

    def complete(self) -> list[str]:
        """Complete the site as ``init`` would, without replacing anything: generate the
        secrets that are missing, then issue the leaf certificates that are missing, expiring,
        or whose names no longer match the inventory (never a new CA: that is ``init``'s).
        Returns the certificates issued."""
        if self._completed:
            return []
        # a site made by an older release lacks the secrets newer templates need (e.g. the
        # migration admin's password): generate only the missing ones, as `init` does
        self.generated = self.store.ensure_all()
        if self.generated:
            self.store.save()
            self.__dict__.pop("secrets", None)
            self._files.clear()
        issued = pki.ensure_pki(
            self.path, self.config, self.inventory, self.store.pki_passphrase(), new_ca=False
        )
        self._completed = True
        self.issued = issued
        if issued:
            self._pem = None
            self._files.clear()
        return issued
