"""Remote hosts: their records, the SSH connection to them, and checks of what a remote run
needs there."""
