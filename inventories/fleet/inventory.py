"""Fleet: a database host (Postgres and Redis), a control-plane host (nginx and the control
plane) and the agents. The databases answer the control plane only (our nftables table).

``ssh_hostname`` is how the installer reaches a host; ``address`` is where its services
listen and peers connect (a private network here). Replace the documentation addresses
(192.0.2.0/24, 198.51.100.0/24, 10.0.0.0/24) with your hosts'.
"""

_SSH = {"ssh_user": "deploy"}  # passwordless sudo; add ssh_key/ssh_port as pyinfra takes them

_db1 = ("db1", {"ssh_hostname": "192.0.2.21", "address": "10.0.0.21", **_SSH})
_cp1 = ("cp1", {"ssh_hostname": "192.0.2.31", "address": "10.0.0.31",
                "dns_names": ["cp1.internal"], **_SSH})

postgres = [_db1]
redis = [_db1]
centrifugo = []  # only with [centrifugo] binary in site.toml
control_plane = [_cp1]
agents = [
    ("web1", {"ssh_hostname": "198.51.100.11", **_SSH}),
    ("web2", {"ssh_hostname": "198.51.100.12", **_SSH}),
    ("build1", {"ssh_hostname": "198.51.100.21", **_SSH}),
]
