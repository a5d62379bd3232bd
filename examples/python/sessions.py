"""session_ext from Python (psycopg 3): login, authenticated requests, a session data
change, "log out everywhere else" and logout.

The application connects as a login role that was granted `authenticated` (PostgREST's
`authenticator` in a Supabase project) and runs each request as PostgREST does: one
transaction that sets the role and the JWT claims, then calls the functions.

    DATABASE_URL=postgresql://authenticator@localhost/app python3 sessions.py
"""

import json
import os
import uuid
from contextlib import contextmanager

import psycopg
from psycopg.types.json import Jsonb


@contextmanager
def request(conn, user_id):
    """One API request of `user_id`: a transaction with PostgREST's role and claims."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT set_config('role', 'authenticated', true),"
            " set_config('request.jwt.claims', %s, true)",
            (json.dumps({"sub": str(user_id), "role": "authenticated"}),),
        )
        yield cur


def login(conn, user_id, device):
    with request(conn, user_id) as cur:
        cur.execute(
            "SELECT id, token FROM session_ext.create_user_session("
            " user_id => %s, session_data => %s::json, device_info => %s,"
            " user_agent => 'examples/python', ip_address => '192.0.2.10')",
            (user_id, json.dumps({"theme": "dark"}), device),
        )
        return cur.fetchone()


def validate(conn, user_id, token):
    """What every authenticated request does first: the session behind the token, or None."""
    with request(conn, user_id) as cur:
        cur.execute("SELECT id, user_id, session_data FROM session_ext.validate_session(%s)", (token,))
        row = cur.fetchone()
        return None if row[0] is None else row


def check(what, ok):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        raise SystemExit(1)


def main():
    user = uuid.uuid4()
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        laptop_id, laptop = login(conn, user, "laptop")
        _, phone = login(conn, user, "phone")
        check("login on two devices returns two tokens", laptop != phone)

        session = validate(conn, user, laptop)
        check("a request with the laptop token finds the session", session is not None and session[1] == user)
        check("validate_session returns the session data", session[2] == {"theme": "dark"})
        check("a made-up token is refused", validate(conn, user, "x" * 43) is None)

        with request(conn, user) as cur:
            cur.execute(
                "SELECT session_ext.update_session_data(session_id => %s, session_data => %s,"
                " expected_version => 1)",
                (laptop_id, Jsonb({"cart": 3})),
            )
            check("update_session_data merges and returns version 2", cur.fetchone()[0] == 2)
        check("the merged data is visible", validate(conn, user, laptop)[2] == {"theme": "dark", "cart": 3})

        with request(conn, user) as cur:
            cur.execute("SELECT device_info FROM session_ext.list_user_sessions() ORDER BY created_at")
            check("list_user_sessions shows both devices", [r[0] for r in cur.fetchall()] == ["laptop", "phone"])
            cur.execute("SELECT session_ext.revoke_other_sessions(%s)", (laptop_id,))
            check("log out everywhere else revokes the phone", cur.fetchone()[0] == 1)
        check("the phone token no longer validates", validate(conn, user, phone) is None)
        check("the laptop token still validates", validate(conn, user, laptop) is not None)

        with request(conn, user) as cur:
            cur.execute("SELECT session_ext.revoke_session(%s)", (laptop_id,))
            check("logout revokes the laptop session", cur.fetchone()[0] is True)
        check("after logout the laptop token is refused", validate(conn, user, laptop) is None)


if __name__ == "__main__":
    main()
