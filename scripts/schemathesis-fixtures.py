#!/usr/bin/env python3
"""Fills a fresh Parlor with what schemathesis needs for real path ids and bodies, and writes
the schemathesis configuration that points its generated requests at them.

    schemathesis-fixtures.py BASE_URL CONFIG_OUT

Users: ann (the caller of every request), ben and cara (her contacts), dan (in no
conversation: someone to add). Conversations: ann–ben direct, and five groups that ann created
(so she is their admin) with ben and cara: generated change requests make her leave some,
or hand over her role, and the others keep the group operations covered. Each has a few messages, so that `target_seq`,
`reply_to_seq` and `before_seq` name real messages. A second session of ann's is the one
`POST /auth/logout` ends, so that logging out does not end the session every other request
uses. Standard library only: it runs before (and without) the tool's virtualenv.
"""

import json
import sys
import time
import urllib.error
import urllib.request

PASSWORD = "correct horse battery"


def request(base, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        raise SystemExit(f"fixtures: {method} {path} answered {error.code}: {text}") from None


def main():
    base, config_out = sys.argv[1], sys.argv[2]
    users = {}
    for name in ["ann", "ben", "cara", "dan"]:
        _, session = request(
            base, "POST", "/api/v1/auth/register", body={"username": name, "password": PASSWORD}
        )
        users[name] = session
    ann = users["ann"]["token"]
    _, spare = request(
        base, "POST", "/api/v1/auth/login", body={"username": "ann", "password": PASSWORD}
    )
    ids = {name: session["user"]["id"] for name, session in users.items()}

    _, direct = request(
        base, "POST", "/api/v1/conversations", ann, {"kind": "direct", "members": [ids["ben"]]}
    )
    groups = []
    for title in [f"Fixtures {n}" for n in range(1, 6)]:
        _, group = request(
            base,
            "POST",
            "/api/v1/conversations",
            ann,
            {"kind": "group", "title": title, "members": [ids["ben"], ids["cara"]]},
        )
        groups.append(group)
    conversations = [direct["id"]] + [group["id"] for group in groups]

    messages = 3
    for index, conversation in enumerate(conversations):
        for n in range(1, messages + 1):
            # Unique per sender: the persister stores one message per (sender, client_msg_id).
            body = {"client_msg_id": f"fixture-{index}-{n}", "body": f"fixture message {n} @ben"}
            request(base, "POST", f"/api/v1/conversations/{conversation}/messages", ann, body)
    # Accepted is durable, not yet stored: wait for the persister.
    deadline = time.monotonic() + 20
    for conversation in conversations:
        while True:
            _, page = request(base, "GET", f"/api/v1/conversations/{conversation}/messages", ann)
            if len(page["messages"]) >= messages:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"fixtures: the messages of {conversation} were not stored")
            time.sleep(0.1)
    seqs = sorted(
        {m["seq"] for c in conversations for m in request(
            base, "GET", f"/api/v1/conversations/{c}/messages", ann)[1]["messages"]}
    )

    def toml_list(values):
        return "[" + ", ".join(json.dumps(v) for v in values) + "]"

    with open(config_out, "w") as out:
        out.write(
            f"""# Written by scripts/schemathesis-fixtures.py for one run; see scripts/schemathesis.
# Every request is ann's (a header, not a generated security parameter).
headers = {{ Authorization = "Bearer {ann}" }}

[dictionaries.conversations]
values = {toml_list(conversations)}

[dictionaries.users]
values = {toml_list([ids["ben"], ids["cara"], ids["dan"], ids["ann"]])}

[dictionaries.seqs]
values = {toml_list(seqs)}

# Mostly real ids; sometimes generated ones, which must answer not_found.
[parameters]
"path.id" = {{ dictionary = "conversations", probability = 0.9 }}
"body.members[*]" = {{ dictionary = "users", probability = 0.9 }}
"body.user_id" = {{ dictionary = "users", probability = 0.9 }}
"body.target_seq" = {{ dictionary = "seqs", probability = 0.8 }}
"body.reply_to_seq" = {{ dictionary = "seqs", probability = 0.8 }}

# Logging out ends a session of ann's own, not the one the other requests use: the first
# logout answers 204, the later ones 401.
[[operations]]
include-name = "POST /api/v1/auth/logout"
headers = {{ Authorization = "Bearer {spare["token"]}" }}
"""
        )
    print(
        f"fixtures: users {', '.join(users)}; conversations {', '.join(conversations)}; "
        f"message seqs {seqs}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
