"""What a person sees: the output sinks, the terminal dashboards and the HTML report.

Beside ``cli.py``, which alone imports this package; nothing in ``swarm/``, ``peer/`` or
``chunker/`` does. It reads ``swarm.events`` and the report's JSON, never the network.
"""
