"""The login page: plain HTML that works without JavaScript, for the browser of
a phone or laptop using an official WireGuard app.

Rules kept here:
- everything from outside (user names, groups, messages) is escaped;
- no external resource and no script; the only style is one <style> element
  whose hash the Content-Security-Policy names (STYLE_HASH);
- every field has a <label>; errors are in a role="alert" region the form
  points to with aria-describedby; the code field asks for a one-time code
  (inputmode numeric, autocomplete one-time-code).
"""

from __future__ import annotations

import base64
import hashlib
import time
from html import escape

STYLE = ("body{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem;"
         "line-height:1.5;color:#111;background:#fff}"
         "label{display:block;margin-top:1rem;font-weight:600}"
         "input{font-size:1rem;width:100%;box-sizing:border-box;padding:.5rem;border:1px solid #555}"
         "button{font-size:1rem;margin-top:1.25rem;padding:.5rem 1.25rem}"
         ".error{color:#a00000;font-weight:600}dt{font-weight:600}dd{margin:0 0 .5rem 0}")
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()

CSP = (f"default-src 'none'; style-src '{STYLE_HASH}'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; img-src 'none'")


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


def _document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title><style>{STYLE}</style></head>'
            f'<body><main>{body}</main></body></html>\n')


def session_page(title: str, *, user: str, groups, expires: float, idle_timeout: int, now: float,
                 client: str) -> str:
    groups_text = ", ".join(groups) or "none"
    body = (f"<h1>{escape(title)}</h1>"
            f'<p id="status" role="status">You are logged in as <strong>{escape(user)}</strong>.</p>'
            f"<dl>"
            f"<dt>Groups</dt><dd id=\"groups\">{escape(groups_text)}</dd>"
            f"<dt>Session expires</dt><dd id=\"expires\"><time datetime=\""
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires))}\">{escape(_when(expires))}</time>"
            f" (in {escape(duration(expires - now))})</dd>"
            f"<dt>Ends when idle for</dt><dd id=\"idle\">{escape(duration(idle_timeout))}</dd>"
            f"<dt>Device</dt><dd>{escape(client)}</dd>"
            f"</dl>"
            f'<form method="post" action="/logout"><button type="submit">Log out</button></form>')
    return _document(title, body)


def login_page(title: str, *, error: str | None = None, user: str = "", code_first: bool = False) -> str:
    alert = f'<p id="error" class="error" role="alert">{escape(error)}</p>' if error else ""
    described = ' aria-describedby="error"' if error else ""
    code_hint = "required" if code_first else "if you use one"
    body = (f"<h1>{escape(title)}</h1>{alert}"
            f'<form method="post" action="/login"{described}>'
            f'<label for="user">User name</label>'
            f'<input id="user" name="user" autocomplete="username" autocapitalize="none" spellcheck="false" '
            f'required value="{escape(user)}"{"" if user else " autofocus"}>'
            f'<label for="password">Password</label>'
            f'<input id="password" name="password" type="password" autocomplete="current-password" required'
            f'{" autofocus" if user else ""}>'
            f'<label for="code">One-time code ({code_hint})</label>'
            f'<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="12"'
            f'{" required" if code_first else ""}>'
            f'<button type="submit">Log in</button></form>')
    return _document(title, body)


def challenge_page(title: str, *, user: str, token: str, message: str, error: str | None = None) -> str:
    alert = f'<p id="error" class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (f"<h1>{escape(title)}</h1>{alert}"
            f'<p id="prompt">{escape(message)}</p>'
            f'<form method="post" action="/login" aria-describedby="prompt">'
            f'<input type="hidden" name="user" value="{escape(user)}">'
            f'<input type="hidden" name="challenge" value="{escape(token)}">'
            f'<label for="code">One-time code</label>'
            f'<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="12" '
            f'required autofocus>'
            f'<button type="submit">Continue</button></form>')
    return _document(title, body)
