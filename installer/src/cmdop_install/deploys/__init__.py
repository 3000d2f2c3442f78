"""pyinfra deploys, one ``@deploy`` per component.

They use pyinfra operations only, never ``pyinfra.api`` state (that is ``runner``'s).
"""
