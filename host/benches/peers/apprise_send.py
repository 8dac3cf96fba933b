"""Sends COUNT JSON webhooks with Apprise to URL from THREADS threads and
prints the deliveries per second (one line, a number).

Run by `cargo xtask bench --peers` (host/benches/peers.rs) with the Python of
a private virtualenv that has Apprise installed. Each thread has its own
Apprise object and sends its share one notification after another, which is
how an application calling Apprise delivers.
"""

import sys
import threading
import time

import apprise


def main() -> None:
    url, count, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    failures = []

    def send(share: int) -> None:
        notifier = apprise.Apprise()
        notifier.add(url)
        for i in range(share):
            if not notifier.notify(title="bench", body=f"message {i}"):
                failures.append(i)

    shares = [count // threads + (1 if t < count % threads else 0) for t in range(threads)]
    workers = [threading.Thread(target=send, args=(share,)) for share in shares]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    if failures:
        sys.exit(f"{len(failures)} of {count} notifications failed")
    print(f"{count / elapsed:.1f}")


if __name__ == "__main__":
    main()
