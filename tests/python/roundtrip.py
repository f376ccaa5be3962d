#!/usr/bin/env python3
"""The C ABI from Python (ctypes): a round trip through a running mc0d plus
the error paths a binding meets. Run by tests/python_ctypes.rs.

usage: roundtrip.py LIBMC0 HOST PORT BROKER_PUBLIC_KEY PUBLIC_KEY PRIVATE_KEY
Exits 0 and prints "python roundtrip: ok" on success.
"""

import ctypes as C
import json
import os
import sys
import threading
import time

MC0_OK, MC0_ERR_INVALID_ARGUMENT, MC0_ERR_CONFIG, MC0_ERR_KEY, MC0_ERR_TIMEOUT, MC0_ERR_CLOSED = 0, 1, 2, 3, 4, 5
MC0_ERR_NOT_FOUND = 11

LOG_FN = C.CFUNCTYPE(None, C.c_void_p, C.c_int32, C.c_char_p)


# topic, header names, values, value lengths, count, body, body length.
PUBLISH_ARGS = [
    C.c_void_p,
    C.c_char_p,
    C.POINTER(C.c_char_p),
    C.POINTER(C.c_void_p),
    C.POINTER(C.c_size_t),
    C.c_size_t,
    C.c_char_p,
    C.c_size_t,
]


def load(path):
    lib = C.CDLL(path)
    sig = {
        "mc0_version": ([], C.c_char_p),
        "mc0_last_error": ([], C.c_char_p),
        "mc0_last_error_key": ([], C.c_char_p),
        "mc0_status_str": ([C.c_uint32], C.c_char_p),
        "mc0_default_port": ([], C.c_uint16),
        "mc0_config_new": ([], C.c_void_p),
        "mc0_config_set": ([C.c_void_p, C.c_char_p, C.c_char_p], C.c_int),
        "mc0_config_free": ([C.c_void_p], None),
        "mc0_connector_new": ([C.c_void_p, C.POINTER(C.c_void_p)], C.c_int),
        "mc0_connector_subscribe": ([C.c_void_p, C.c_char_p], C.c_int),
        "mc0_connector_unsubscribe": ([C.c_void_p, C.c_char_p], C.c_int),
        "mc0_connector_publish": (PUBLISH_ARGS, C.c_int),
        "mc0_connector_publish_ttl": (PUBLISH_ARGS + [C.c_uint64], C.c_int),
        "mc0_connector_subscribe_queue": ([C.c_void_p, C.c_char_p, C.c_char_p], C.c_int),
        "mc0_connector_ack": ([C.c_void_p, C.c_uint64], C.c_int),
        "mc0_connector_receive": ([C.c_void_p, C.c_int32, C.POINTER(C.c_void_p)], C.c_int),
        "mc0_connector_flush": ([C.c_void_p, C.c_int32], C.c_int),
        "mc0_connector_close": ([C.c_void_p], C.c_int),
        "mc0_connector_free": ([C.c_void_p], None),
        "mc0_message_topic": ([C.c_void_p], C.c_char_p),
        "mc0_message_sender": ([C.c_void_p], C.c_char_p),
        "mc0_message_sender_key": ([C.c_void_p], C.c_char_p),
        "mc0_message_header_count": ([C.c_void_p], C.c_size_t),
        "mc0_message_header_name": ([C.c_void_p, C.c_size_t], C.c_char_p),
        "mc0_message_header_value": ([C.c_void_p, C.c_size_t, C.POINTER(C.c_size_t)], C.c_void_p),
        "mc0_message_header": ([C.c_void_p, C.c_char_p, C.POINTER(C.c_size_t)], C.c_void_p),
        "mc0_message_header_find": (
            [C.c_void_p, C.c_char_p, C.POINTER(C.c_void_p), C.POINTER(C.c_size_t)],
            C.c_int,
        ),
        "mc0_message_headers_json": ([C.c_void_p], C.c_void_p),
        "mc0_message_body": ([C.c_void_p, C.POINTER(C.c_size_t)], C.c_void_p),
        "mc0_message_free": ([C.c_void_p], None),
        "mc0_topic_agent": ([C.c_char_p, C.c_char_p], C.c_void_p),
        "mc0_topic_reply": ([C.c_char_p, C.c_char_p, C.c_uint32], C.c_void_p),
        "mc0_topic_for_subscription": ([C.c_char_p] * 4 + [C.c_uint32], C.c_void_p),
        "mc0_string_free": ([C.c_void_p], None),
        "mc0_curve_keypair": ([C.c_char_p, C.c_char_p], C.c_int),
        "mc0_set_log_callback": ([LOG_FN, C.c_void_p, C.c_int32], None),
    }
    for name, (args, res) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res
    return lib


def take_string(lib, ptr):
    """Copies and frees a char* the library handed out."""
    assert ptr, lib.mc0_last_error().decode()
    try:
        return C.string_at(ptr).decode()
    finally:
        lib.mc0_string_free(ptr)


def check(cond, what, lib=None):
    if not cond:
        detail = f" (last error: {lib.mc0_last_error().decode()})" if lib else ""
        raise AssertionError(what + detail)


def publish(lib, c, topic, headers, body):
    n = len(headers)
    names = (C.c_char_p * n)(*[k.encode() for k, _ in headers])
    bufs = [C.create_string_buffer(v, len(v)) for _, v in headers]
    values = (C.c_void_p * n)(*[C.cast(b, C.c_void_p) for b in bufs])
    lens = (C.c_size_t * n)(*[len(v) for _, v in headers])
    return lib.mc0_connector_publish(c, topic.encode(), names, values, lens, n, body, len(body))


def receive(lib, c, timeout_ms):
    out = C.c_void_p()
    status = lib.mc0_connector_receive(c, timeout_ms, C.byref(out))
    if status != MC0_OK:
        check(not out, "receive sets *out to NULL on failure")
        return status, None
    m = out
    try:
        n = C.c_size_t()
        body = C.string_at(lib.mc0_message_body(m, C.byref(n)), n.value)
        headers = {}
        for i in range(lib.mc0_message_header_count(m)):
            name = lib.mc0_message_header_name(m, i).decode()
            ptr = lib.mc0_message_header_value(m, i, C.byref(n))
            headers[name] = C.string_at(ptr, n.value)
            found = C.c_void_p()
            check(lib.mc0_message_header_find(m, name.encode(), C.byref(found), C.byref(n)) == MC0_OK, "find")
            check(C.string_at(found, n.value) == headers[name], "find's value")
        found = C.c_void_p()
        status = lib.mc0_message_header_find(m, b"X-NONE", C.byref(found), C.byref(n))
        check(status == MC0_ERR_NOT_FOUND and not found and n.value == 0, f"an absent header: {status}")
        as_json = json.loads(take_string(lib, lib.mc0_message_headers_json(m)))
        sender = (lib.mc0_message_sender(m), lib.mc0_message_sender_key(m))
        return MC0_OK, (lib.mc0_message_topic(m).decode(), headers, body, as_json, sender)
    finally:
        lib.mc0_message_free(m)


def main():
    libpath, host, port, broker_public, public, private = sys.argv[1:7]
    lib = load(libpath)
    check(lib.mc0_version().decode().count(".") == 2, "version")

    log_lines = []
    log_lock = threading.Lock()

    @LOG_FN
    def on_log(_user, level, message):
        with log_lock:
            log_lines.append((level, message.decode()))

    lib.mc0_set_log_callback(on_log, None, 4)

    # Topics and keys.
    check(take_string(lib, lib.mc0_topic_agent(b"mcollective", b"rpcutil")) == "mcollective rpcutil", "agent topic")
    reply_topic = take_string(lib, lib.mc0_topic_reply(b"mcollective", b"py", os.getpid()))
    check(reply_topic == f"mcollective reply py {os.getpid()}", "reply topic")
    topic = lib.mc0_topic_for_subscription(b"broadcast", b"rpcutil", b"mcollective", b"py", 1)
    check(take_string(lib, topic) == "mcollective rpcutil", "the subscription mapping")
    check(lib.mc0_default_port() > 0, "default port")
    check(lib.mc0_status_str(MC0_ERR_TIMEOUT) == b"timeout", "status names")
    pub, sec = C.create_string_buffer(41), C.create_string_buffer(41)
    check(lib.mc0_curve_keypair(pub, sec) == MC0_OK and len(pub.value) == 40, "keypair")

    # Config errors.
    cfg = lib.mc0_config_new()
    check(lib.mc0_config_set(cfg, b"broker.hots", b"x") == MC0_ERR_CONFIG, "unknown key")
    check(b"broker.hots" in lib.mc0_last_error(), "error names the key")
    check(lib.mc0_last_error_key() == b"broker.hots", "the key as data")
    check(lib.mc0_config_set(None, b"broker.host", b"x") == MC0_ERR_INVALID_ARGUMENT, "NULL config")
    for key, value in [
        ("broker.host", host),
        ("broker.port", port),
        ("broker.public_key", broker_public + ".missing"),
        ("public_key", public),
        ("private_key", private),
        ("identity", "py"),
        ("connect_timeout", "20"),
    ]:
        check(lib.mc0_config_set(cfg, key.encode(), value.encode()) == MC0_OK, key, lib)
    c = C.c_void_p()
    check(lib.mc0_connector_new(cfg, C.byref(c)) == MC0_ERR_KEY, "missing key file")
    check((broker_public + ".missing").encode() in lib.mc0_last_error(), "error names the file")
    check(not c, "no connector on failure")
    check(lib.mc0_config_set(cfg, b"broker.public_key", broker_public.encode()) == MC0_OK, "key")
    check(lib.mc0_connector_new(cfg, C.byref(c)) == MC0_OK, "connect", lib)
    lib.mc0_config_free(cfg)

    # Round trip with binary header and body.
    check(lib.mc0_connector_subscribe(c, reply_topic.encode()) == MC0_OK, "subscribe", lib)
    body = bytes(range(256)) + b"\x00\x00"
    headers = [("X-REPLY-TO", reply_topic.encode()), ("X-BIN", b"\x00\xff\x00")]
    check(publish(lib, c, reply_topic, headers, body) == MC0_OK, "publish", lib)
    status, got = receive(lib, c, 20000)
    check(status == MC0_OK, f"receive: {status}", lib)
    topic, got_headers, got_body, as_json, (sender, sender_key) = got
    check(topic == reply_topic, f"topic {topic!r}")
    check(got_headers == dict(headers), f"headers {got_headers!r}")
    check(got_body == body, "body")
    check(as_json["X-REPLY-TO"] == reply_topic, f"json {as_json!r}")
    # mc0d's stamp: our own key; no name without an allowlist.
    with open(public) as f:
        check(sender_key == f.read().strip().encode(), f"sender key {sender_key!r}")
    check(sender is None, f"sender {sender!r}")
    n = C.c_size_t()
    check(lib.mc0_message_header(None, b"X-BIN", C.byref(n)) is None and n.value == 0, "NULL message")

    # A queue: a message with a time-to-live, kept and delivered with its
    # delivery id; explicit_ack is off, so receive acknowledged it.
    queue_topic = f"mcollective reply py q{os.getpid()}"
    check(lib.mc0_connector_subscribe_queue(c, queue_topic.encode(), b"async") == MC0_OK, "subscribe queue", lib)
    none = (C.c_char_p * 0)()
    status = lib.mc0_connector_publish_ttl(c, queue_topic.encode(), none, None, None, 0, b"q", 1, 60000)
    check(status == MC0_OK, "publish with ttl", lib)
    status, got = receive(lib, c, 20000)
    check(status == MC0_OK, f"receive from queue: {status}", lib)
    q_headers = got[1]
    check(q_headers["QUEUE"] == b"async" and int(q_headers["DELIVERY"]) > 0, f"queue headers {q_headers!r}")
    check(0 < int(q_headers["EXPIRES-IN"]) <= 60000, "time left")
    check(lib.mc0_connector_ack(c, int(q_headers["DELIVERY"])) == MC0_OK, "ack (a second one is harmless)", lib)
    check(lib.mc0_connector_unsubscribe(c, queue_topic.encode()) == MC0_OK, "unsubscribe queue", lib)

    # Errors while connected.
    check(publish(lib, c, reply_topic, [("REPLY-TO", b"x")], b"") == MC0_ERR_INVALID_ARGUMENT, "reserved header")
    status, _ = receive(lib, c, 50)
    check(status == MC0_ERR_TIMEOUT, f"timeout: {status}")
    check(lib.mc0_connector_flush(c, 20000) == MC0_OK, "flush", lib)

    # close() from another thread wakes a receive blocked here.
    closer = threading.Thread(target=lambda: (time.sleep(0.2), lib.mc0_connector_close(c)))
    closer.start()
    status, _ = receive(lib, c, -1)
    closer.join()
    check(status == MC0_ERR_CLOSED, f"blocked receive after close: {status}")
    check(lib.mc0_connector_subscribe(c, b"t") == MC0_ERR_CLOSED, "closed")
    lib.mc0_connector_free(c)

    lib.mc0_set_log_callback(LOG_FN(), None, 0)
    with log_lock:
        check(any("connected to" in line for _, line in log_lines), f"log lines: {log_lines!r}")
        check(all(1 <= level <= 4 for level, _ in log_lines), "levels")
    print("python roundtrip: ok")


if __name__ == "__main__":
    main()
