"""Single node: Postgres, Redis, nginx and the control plane on one host, two agents.

Replace the addresses (192.0.2.0/24 and 198.51.100.0/24 are documentation ranges) with
your hosts'; add ssh_user/ssh_key/ssh_port as pyinfra takes them.
"""

_node1 = ("node1", {"ssh_hostname": "192.0.2.10", "dns_names": ["node1.internal"]})

postgres = [_node1]
redis = [_node1]
centrifugo = []  # only with [centrifugo] binary in site.toml
control_plane = [_node1]
agents = [
    ("web1", {"ssh_hostname": "198.51.100.11"}),
    ("web2", {"ssh_hostname": "198.51.100.12"}),
]
