"""Tests of the mc0 Python module against the real libmc0 and a real mc0d
(CURVE on, 127.0.0.1). `make test-python` runs them with MC0_LIBRARY and
MC0_BIN_DIR pointing at target/release; every wait is bounded."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mc0  # noqa: E402

BIN_DIR = os.environ.get("MC0_BIN_DIR", os.path.join(os.path.dirname(__file__), "../../target/release"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mc0d on a free loopback port with a fresh key and extra arguments
    args, killed on stop(); kill() and start() restart it on that port."""

    def __init__(self, tmp, args=()):
        self.tmp = tmp
        self.args = list(args)
        subprocess.run([os.path.join(BIN_DIR, "mc0-keygen"), os.path.join(tmp, "broker")],
                       check=True, capture_output=True, timeout=30)
        subprocess.run([os.path.join(BIN_DIR, "mc0-keygen"), os.path.join(tmp, "client")],
                       check=True, capture_output=True, timeout=30)
        self.port = free_port()
        self.log = open(os.path.join(tmp, "mc0d.log"), "w+")
        self.start()

    def start(self):
        starts = self.log_text().count("listening on")
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "mc0d"), "--bind", "127.0.0.1", "--port", str(self.port),
             "--curve-private-key", os.path.join(self.tmp, "broker.private")] + self.args,
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while self.log_text().count("listening on") == starts:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mc0d did not start: " + self.log_text())
            time.sleep(0.05)

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def log_text(self):
        with open(self.log.name) as f:
            return f.read()

    def config(self, **extra):
        cfg = {"broker.host": "127.0.0.1", "broker.port": self.port,
               "broker.public_key": os.path.join(self.tmp, "broker.public"),
               "private_key": os.path.join(self.tmp, "client.private"),
               "connect_timeout": 10}
        cfg.update(extra)
        return cfg

    def stop(self):
        self.kill()
        self.log.close()


class WithoutBroker(unittest.TestCase):
    def test_library_facts(self):
        self.assertRegex(mc0.version(), r"^\d+\.\d+\.\d+")
        self.assertEqual(mc0.default_port(), 61616)
        public, secret = mc0.curve_keypair()
        self.assertEqual((len(public), len(secret)), (40, 40))
        self.assertNotEqual(public, secret)

    def test_topics(self):
        self.assertEqual(mc0.topic_agent("mcollective", "rpcutil"), "mcollective rpcutil")
        self.assertEqual(mc0.topic_node("mcollective", "web1"), "mcollective nodes web1")
        self.assertEqual(mc0.topic_reply("mcollective", "me", 42), "mcollective reply me 42")
        self.assertEqual(mc0.topic_for_subscription("directed", "rpcutil", "mcollective", "web1", 1),
                         "mcollective nodes web1")
        with self.assertRaises(mc0.Error) as e:
            mc0.topic_for_subscription("queue", "rpcutil", "mcollective", "web1", 1)
        self.assertEqual(e.exception.status, mc0.ERR_INVALID_ARGUMENT)
        self.assertIn("queue", e.exception.message)

    def test_unknown_key_names_it(self):
        with self.assertRaises(mc0.Error) as e:
            mc0.Connector({"broker.host": "127.0.0.1", "no_such_setting": "1"})
        self.assertEqual(e.exception.status, mc0.ERR_CONFIG)
        self.assertEqual(e.exception.key, "no_such_setting")
        self.assertIn("no_such_setting", str(e.exception))

    def test_missing_key_file_names_it(self):
        with self.assertRaises(mc0.Error) as e:
            mc0.Connector({"broker.host": "127.0.0.1", "broker.public_key": "/nonexistent/broker.public",
                           "private_key": "/nonexistent/me.private"})
        self.assertEqual(e.exception.status, mc0.ERR_KEY)
        self.assertIn("/nonexistent/", e.exception.message)


class WithBroker(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mc0-py-")
        self.broker = Broker(self.tmp)

    def tearDown(self):
        self.broker.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_round_trip_with_headers(self):
        with mc0.Connector(self.broker.config()) as c:
            topic = mc0.topic_agent("mcollective", "py")
            c.subscribe(topic)
            self.assertIsNone(c.receive(timeout_ms=0))
            c.publish(topic, b"\x00binary body", {"X-REPLY-TO": "mcollective reply me 42", "X-BIN": b"\x01\x02"})
            c.flush(timeout_ms=10000)
            m = c.receive(timeout_ms=10000)
            self.assertIsNotNone(m, "no message within 10 s")
            self.assertEqual(m.topic, topic)
            self.assertEqual(m.body, b"\x00binary body")
            self.assertEqual(m.headers, {"X-REPLY-TO": b"mcollective reply me 42", "X-BIN": b"\x01\x02"})
            self.assertEqual(len(m.sender_key), 40)  # CURVE, no allowlist: the broker stamps the key

    def test_close_from_another_thread_wakes_receive(self):
        c = mc0.Connector(self.broker.config())
        outcome = []

        def wait():
            try:
                outcome.append(c.receive(timeout_ms=30000))
            except mc0.Error as e:
                outcome.append(e)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)  # let it enter libmc0; closing earlier is also a closed receive
        started = time.monotonic()
        c.close()
        waiter.join(10)
        self.assertFalse(waiter.is_alive(), "receive did not return after close")
        self.assertLess(time.monotonic() - started, 5)
        self.assertIsInstance(outcome[0], mc0.Error)
        self.assertEqual(outcome[0].status, mc0.ERR_CLOSED)
        c.free()
        with self.assertRaises(mc0.Error) as e:
            c.subscribe("after free")
        self.assertEqual(e.exception.status, mc0.ERR_CLOSED)


if __name__ == "__main__":
    unittest.main()


def wait_until(predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class WithQueues(unittest.TestCase):
    """Queue subscribe, acknowledgement and publish with a TTL (issue 14)."""

    TOPIC = "mcollective reply py async"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mc0-py-")
        self.broker = Broker(self.tmp, ["--queue", self.TOPIC + "=async"])

    def tearDown(self):
        self.broker.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_queue_keeps_messages_until_acknowledged(self):
        with mc0.Connector(self.broker.config()) as publisher:
            publisher.publish(self.TOPIC, b"one", ttl_ms=60000)
            publisher.publish(self.TOPIC, b"two")
            publisher.flush(timeout_ms=10000)
        # The declared queue kept both; this consumer acknowledges only the first.
        with mc0.Connector(self.broker.config(explicit_ack=True)) as first:
            first.subscribe_queue(self.TOPIC, "async")
            one, two = first.receive(timeout_ms=10000), first.receive(timeout_ms=10000)
            self.assertEqual((one.body, two.body), (b"one", b"two"))
            self.assertEqual(one.headers["QUEUE"], b"async")
            self.assertTrue(0 < int(one.headers["EXPIRES-IN"]) <= 60000, one.headers)
            self.assertNotIn("EXPIRES-IN", two.headers)
            self.assertNotIn("REDELIVERED", one.headers)
            first.ack(one)
            first.flush(timeout_ms=10000)
        # The unacknowledged one comes again, marked; receive acknowledges it.
        with mc0.Connector(self.broker.config()) as second:
            second.subscribe_queue(self.TOPIC, "async")
            again = second.receive(timeout_ms=10000)
            self.assertEqual(again.body, b"two")
            self.assertEqual(again.headers["REDELIVERED"], b"1")
            self.assertIsNone(second.receive(timeout_ms=300), "the acknowledged one came back")
        with mc0.Connector(self.broker.config()) as third:
            third.subscribe_queue(self.TOPIC, "async")
            self.assertIsNone(third.receive(timeout_ms=300), "an acknowledged message came back")

    def test_a_publish_whose_ttl_ran_out_while_the_broker_was_down_is_never_sent(self):
        with mc0.Connector(self.broker.config(heartbeat=1)) as c:
            c.subscribe("mcollective news")
            self.broker.kill()
            self.assertTrue(wait_until(lambda: c.stats()["reconnects"] >= 1), "never noticed the broker's death")
            c.publish("mcollective news", b"stale", ttl_ms=100)
            c.publish("mcollective news", b"fresh", ttl_ms=60000)
            time.sleep(0.3)  # the point is time passing: the short TTL runs out meanwhile
            self.broker.start()
            c.flush(timeout_ms=20000)
            stats = c.stats()
            self.assertEqual((stats["expired"], stats["published"]), (1, 1), stats)
            self.assertEqual(c.receive(timeout_ms=10000).body, b"fresh")
            self.assertIsNone(c.receive(timeout_ms=300))
