"""Public identifiers in the style of the API contract (``exp_xp_6a2d9c``, ``batch_9f1e3c``).

Prefixes tell a reader what an id points at; the random part is long enough to be unguessable.
"""

import secrets

EXPORT = "exp_xp"
EXPENSE = "exp"
BATCH = "batch"
ORGANIZATION = "org"
CONNECTION = "conn"
EVENT = "evt"
API_KEY = "key"


def new_id(prefix: str, nbytes: int = 8) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"
