"""cmdop: the person's command line (login, machines, connect, exec, cp, sessions, audit)."""
