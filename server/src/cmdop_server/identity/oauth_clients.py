"""The OAuth clients this control plane knows (public clients: no secret, RFC 8628 §5.6)."""

CLIENTS = {
    "cmdop-cli": "CMDOP command-line client",
    "cmdop-agent": "CMDOP agent",
}
SCOPES = frozenset({"api", "agent"})
