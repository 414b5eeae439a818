"""Users for the schemathesis run of tests/openapi/run.sh.

As a script: `hooks.py register BASE` registers a fresh user and prints its access token (the
logged-in user of pass 1).

As schemathesis hooks (SCHEMATHESIS_HOOKS=hooks.py, pass 2): every test case runs as a
throwaway user registered for it, so that operations which end the caller's session (logout,
password change, account deletion) can succeed without taking the next case's token with them.
For the admin-only operations (`/api/v1/users/{id}`) the throwaway is promoted to admin by the
server's first admin (CHAT_ADMIN_LOGIN / CHAT_ADMIN_PASSWORD) and logs in again. Half of the
cases get the throwaway's real password (and, on `/users/{id}`, its own id), so the success
paths are exercised too, not only the refusals.
"""

import itertools
import json
import os
import secrets
import sys
import urllib.error
import urllib.request


def call(base, method, path, body=None, token=None, expect=(200, 201, 204)):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            status, raw = res.status, res.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if status not in expect:
        raise RuntimeError(f"{method} {path}: {status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def register(base):
    """A fresh user: (id, access token, password)."""
    name = "fz-" + secrets.token_hex(6)
    password = secrets.token_urlsafe(12)
    out = call(base, "POST", "/api/v1/auth/register",
               {"username": name, "email": f"{name}@example.com", "password": password})
    return out["user"]["id"], out["tokens"]["access"], password, name


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "register":
        sys.exit("usage: hooks.py register BASE")
    print(register(sys.argv[2])[1])
    sys.exit(0)

import schemathesis  # noqa: E402  (only needed as hooks)

BASE = os.environ.get("CHAT_BASE", "")
_admin = None  # (id, access token) of the server's first admin, who promotes the throwaways
# Every other case gets the real password / own id (not `random`: Hypothesis objects to it).
_turn = itertools.count()


def admin():
    global _admin
    if _admin is None:
        out = call(BASE, "POST", "/api/v1/auth/login",
                   {"login": os.environ["CHAT_ADMIN_LOGIN"], "password": os.environ["CHAT_ADMIN_PASSWORD"]})
        _admin = (out["user"]["id"], out["access"])
    return _admin


@schemathesis.auth(refresh_interval=None, retry_on=[])
class ThrowawayUser:
    """A new user for every test case (no caching)."""

    def get(self, case, context):
        user_id, token, password, name = register(BASE)
        if case.operation.path == "/api/v1/users/{id}":
            call(BASE, "PATCH", f"/api/v1/users/{user_id}", {"roles": ["user", "admin"]}, token=admin()[1])
            token = call(BASE, "POST", "/api/v1/auth/login", {"login": name, "password": password})["access"]
        return {"id": user_id, "token": token, "password": password}

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data['token']}"
        # The first admin promotes every throwaway: a case may not delete or demote it.
        if _admin and case.path_parameters and str(case.path_parameters.get("id")) == str(_admin[0]):
            case.path_parameters["id"] = data["id"]
        if next(_turn) % 2:
            return
        if isinstance(case.body, dict):
            for field in ("current_password", "password"):
                if field in case.body:
                    case.body[field] = data["password"]
        if case.path_parameters and "id" in case.path_parameters:
            case.path_parameters["id"] = data["id"]
