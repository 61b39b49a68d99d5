"""The login endpoint's wire contract, shared by the server (server/auth/web.py)
and `tunnel login` (client/login.py), which must not import each other.

Only names and limits live here: no I/O, no logic.

    POST /api/login    {"user", "password", "code"?, "state"?}
        200 {"ok": true, "user", "groups", "expires", "expires_in", "idle_timeout"}
        401 {"error": "bad_credentials" | "code_required", "message", "challenge"?: {"state", "message"}}
        429 {"error": "locked", "message", "retry_after"}       (and a Retry-After header)
        429 {"error": "busy", "message"}           (a login for this user or client is in progress)
        503 {"error": "unavailable", "message"}
        403 {"error": "not_a_client", "message"}
        400 / 413 {"error": "bad_request", "message"}
    GET  /api/session  200 {"ok": true, ...as above} or 404 {"error": "no_session", "code": CODE_*}
    POST /api/logout   200 {"ok": true} or 404 {"error": "no_session"}

`expires` is ISO 8601 in UTC; `expires_in` and `idle_timeout` are seconds.
"""

from __future__ import annotations

DEFAULT_PORT = 80

PATH_LOGIN = "/api/login"
PATH_SESSION = "/api/session"
PATH_LOGOUT = "/api/logout"

MAX_BODY = 4096  # bytes of a request body; a login is a few dozen

# "error" values
BAD_CREDENTIALS = "bad_credentials"
CODE_REQUIRED = "code_required"  # answer the challenge: post again with "code" (and "state" if given)
LOCKED = "locked"
BUSY = "busy"  # another login for this user or client is being checked (429)
UNAVAILABLE = "unavailable"  # the authentication server did not answer
NOT_A_CLIENT = "not_a_client"  # the request did not come from a client's tunnel address
NO_SESSION = "no_session"
BAD_REQUEST = "bad_request"

# "code" in a no_session answer: when to ask the user for a one-time code
CODE_WITH_PASSWORD = "with_password"  # ask for it up front (RADIUS with the code appended)
CODE_ON_CHALLENGE = "on_challenge"  # ask only if the server answers code_required
