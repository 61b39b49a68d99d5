"""User login for a WireGuard server: who is behind a client key, for how long.

A client's key still completes the handshake; a login binds a user (with the
groups from the local accounts or from RADIUS) to that client's tunnel address
for a session that ends after its lifetime, when idle, or when kicked.

    passwords.py   scrypt hashes in a self-describing string
    totp.py        RFC 6238 codes, otpauth:// URIs
    accounts.py    local accounts and their store interface
    accountfile.py a JSON file store for accounts (until the registry backs them)
    backend.py     what every backend answers (accepted / rejected / challenged / unavailable)
    local.py       the local-accounts backend
    radius.py      the RADIUS backend (pyrad): Access-Request, Access-Challenge, accounting
    lockout.py     five failures in five minutes lock a user or a client
    sessions.py    the session core: no I/O, clock passed in, actions out
    service.py     ties them together for the endpoint and the daemon
    web.py, page.py  the login endpoint: JSON API and an accessible HTML page
    cli.py         `tunnel server user ...`
"""
