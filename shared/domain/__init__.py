"""Domain logic that producers and workers share: the state machine, export services, mapping."""
