"""moto's DynamoDB server, handling one request at a time.

`moto_server` serves each request on a thread of its own, and moto's `TransactWriteItems` is not
safe under that: it deep-copies the tables while another thread changes them ("dictionary
changed size during iteration", answered as HTTP 500), and its condition checks and writes are
not one atomic step across threads. DynamoDB applies each transaction atomically, so the
emulator must too: requests are served one at a time here (connections still kept alive).

Usage: python moto_serialized.py -H 127.0.0.1 -p PORT (started by `cargo xtask services`).
"""

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    app = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def serialized(environ, start_response):
        with one_at_a_time:
            # The whole body is produced under the lock: moto builds it from live tables.
            return list(app(environ, start_response))

    run_simple(args.host, args.port, serialized, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
