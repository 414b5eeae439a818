"""The main flow through a client generated from /api/v1/openapi.json by openapi-python-client:
register → login → create room → post a message → history → logout, then the logged-out
token is refused. Every call goes through the generated code (request models, response
parsing); any surprise fails the run.

    PYTHONPATH=<dir holding chat_client> python client_flow.py http://127.0.0.1:PORT
"""

import secrets
import sys
from http import HTTPStatus

from chat_client import AuthenticatedClient, Client
from chat_client.api.auth import login, logout, register
from chat_client.api.messages import create_message, list_messages
from chat_client.api.rooms import create_room
from chat_client.api.users import get_me
from chat_client.models import (
    CreateRoomRequest,
    ErrorBody,
    HistoryResponse,
    LoginRequest,
    LoginResponse,
    Message,
    RegisterRequest,
    RegisterResponse,
    Room,
    SendRequest,
)


def expect(step, res, status, model):
    if res.status_code != status or not isinstance(res.parsed, model):
        sys.exit(f"{step}: expected {int(status)} {model.__name__}, got {int(res.status_code)} "
                 f"{type(res.parsed).__name__}: {res.content[:300]!r}")
    print(f"ok  {step}: {int(status)}")
    return res.parsed


def main(base):
    name = "client-" + secrets.token_hex(4)
    password = secrets.token_urlsafe(12)
    anon = Client(base_url=base, raise_on_unexpected_status=True)

    reg = expect("register", register.sync_detailed(client=anon, body=RegisterRequest(
        username=name, email=f"{name}@example.com", password=password)),
        HTTPStatus.CREATED, RegisterResponse)
    assert reg.user.username == name and reg.tokens.token_type == "Bearer", reg

    again = expect("register the same name again", register.sync_detailed(client=anon, body=RegisterRequest(
        username=name, email=f"other-{name}@example.com", password=password)),
        HTTPStatus.CONFLICT, ErrorBody)
    assert again.error.code == "conflict", again

    logged = expect("login", login.sync_detailed(client=anon, body=LoginRequest(login=name, password=password)),
                    HTTPStatus.OK, LoginResponse)
    assert logged.user.id == reg.user.id and logged.access, logged
    me = AuthenticatedClient(base_url=base, token=logged.access, raise_on_unexpected_status=True)

    room_name = "room-" + secrets.token_hex(4)
    room = expect("create room", create_room.sync_detailed(client=me, body=CreateRoomRequest(
        name=room_name, topic="generated client")), HTTPStatus.CREATED, Room)
    assert room.name == room_name and room.owner.id == reg.user.id and room.member_count == 1, room

    sent = expect("post a message", create_message.sync_detailed(room_name, client=me, body=SendRequest(
        content="hello from a generated client", client_id="c1")), HTTPStatus.CREATED, Message)
    assert sent.seq == 1 and sent.user.id == reg.user.id, sent
    repeat = expect("post it again (same client_id)", create_message.sync_detailed(room_name, client=me, body=SendRequest(
        content="hello from a generated client", client_id="c1")), HTTPStatus.OK, Message)
    assert repeat.id == sent.id, repeat

    history = expect("history", list_messages.sync_detailed(room_name, client=me), HTTPStatus.OK, HistoryResponse)
    assert [m.content for m in history.items] == ["hello from a generated client"], history
    assert history.items[0].id == sent.id and history.has_more is False, history

    res = logout.sync_detailed(client=me, body=None)
    if res.status_code != HTTPStatus.NO_CONTENT:
        sys.exit(f"logout: expected 204, got {int(res.status_code)}: {res.content[:300]!r}")
    print("ok  logout: 204")

    refused = expect("the logged-out token is refused", get_me.sync_detailed(client=me),
                     HTTPStatus.UNAUTHORIZED, ErrorBody)
    assert refused.error.code == "invalid_token", refused
    print("generated client flow: ok")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: client_flow.py BASE_URL")
    main(sys.argv[1])
