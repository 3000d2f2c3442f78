"""Sessions on machines, their participants, and the one authorization function (issue 5)."""
