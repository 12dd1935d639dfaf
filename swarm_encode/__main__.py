"""``python -m swarm_encode``: the ``swarm`` command, where the scripts folder is not on PATH."""

from swarm_encode import main

main()
