"""pyinfra deploys, one ``@deploy`` per component; they use operations, never ``pyinfra.api`` state."""
