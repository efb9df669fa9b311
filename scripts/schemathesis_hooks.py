"""schemathesis hooks for scripts/schemathesis: known server bugs, each dropped as narrowly as
it can be (one operation, one check, one shape of request), so that everything else about
the same operation is still checked. Remove an entry once its bug is fixed.
"""

import schemathesis
from schemathesis.core.failures import AcceptedNegativeData, Failure

EVENTS = "POST /api/v1/conversations/{id}/events"
USERS = "GET /api/v1/users"


@schemathesis.hook
def filter_failure(context, failure: Failure, case, response) -> bool:
    """Keeps every failure but the known ones."""
    # Server bug: a change request's `kind` may be the index of a kind instead of its name:
    # {"client_msg_id":"x","kind":0,"body":"hi"} is accepted (202) and stored as a message,
    # 1 is an edit, and so on (serde reads an internally tagged enum's tag as a variant
    # index). The protocol names kinds by string; anything else must be invalid_input. The
    # WebSocket's `event` frame shares the type.
    if (
        case.operation.label == EVENTS
        and isinstance(failure, AcceptedNegativeData)
        and isinstance(case.body, dict)
        and type(case.body.get("kind")) is int
    ):
        return False
    if _users_with_repeated_query(case, response):
        return False
    return True


def _users_with_repeated_query(case, response) -> bool:
    # Server bug: GET /api/v1/users?q=a&q=b answers 400 with axum's text/plain rejection
    # ("Failed to deserialize query string: duplicate field `q`") instead of the protocol's
    # JSON error, invalid_input. (/messages and /events map the same rejection to JSON.)
    return (
        case.operation.label == USERS
        and response.status_code == 400
        and response.headers.get("content-type", [""])[0].startswith("text/plain")
    )
