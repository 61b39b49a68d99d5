"""Who may reach what, and who is connecting: the access policy, bandwidth and user sessions of a
running server, kept in step with the registry.

    settings.py   the login settings kept in the registry (`tunnel server auth ...`)
    stores.py     the registry behind the login code's account, lockout and session interfaces
    control.py    AccessControl: a service of the server role; on every registry snapshot it
                  compiles the policy for the clients (and the sessions that admit them),
                  applies it to the kernel, sets the bandwidth limits and runs the login
                  endpoint; a ticker ends idle and expired sessions
    cli.py        `tunnel server policy|auth|user|sessions|kick`

The policy language and its kernel tables are server/policy, the limits server/shaping, the
login backends, session core and web endpoint server/auth: this package only wires them to the
registry and to the running interface.
"""
