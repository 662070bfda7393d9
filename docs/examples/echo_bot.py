"""An echo bot: answers every whisper with the same text, end-to-end encrypted.

    python docs/examples/echo_bot.py --nick echobot --cafile certs/ca.pem

It uses only the public API: `securechat.Client` with identity keys from a keystore,
iterating over events until the connection ends. Its keys live in
`$XDG_DATA_HOME/securechat/HOST_PORT/NICK/` like any client's (unprotected here: a
bot has no one to type a passphrase; set SECURECHAT_PASSPHRASE to protect them).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from securechat import Client
from securechat.client.events import WhisperReceived
from securechat.client.keystore import Keystore, default_keystore_dir
from securechat.client.whispers import WhisperKeys
from securechat.protocol import PrekeyCount
from securechat.transport import client_context


def open_keys(directory: Path, nick: str) -> WhisperKeys:
    passphrase = os.environ.get("SECURECHAT_PASSPHRASE") or None
    if Keystore.exists(directory):
        store = Keystore.open(directory, passphrase)
    else:
        store = Keystore.create(directory, passphrase)
    return WhisperKeys.in_keystore(store, nick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nick", default="echobot")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7443)
    parser.add_argument("--cafile", default="certs/ca.pem")
    args = parser.parse_args()

    keys = open_keys(default_keystore_dir(args.host, args.port, args.nick), args.nick)
    ready = False
    bot = Client(
        args.nick,
        context=client_context(args.cafile),
        host=args.host,
        port=args.port,
        keys=keys,
        reconnect=True,
    )
    with bot:  # connects; closes on the way out
        for event in bot:  # stops when the connection is over for good
            if isinstance(event, PrekeyCount) and event.spk_id and not ready:
                # The server holds our keys now: others can start sessions with us.
                print(f"{args.nick} is listening", flush=True)
                ready = True
            elif isinstance(event, WhisperReceived):
                bot.whisper(event.sender, f"echo: {event.text}")


if __name__ == "__main__":
    main()
