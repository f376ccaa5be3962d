"""libmc0 from Python: the ZeroMQ (CURVE) transport for MCollective 2.x.

A thin layer over libmc0's C API (mc0.h) through ctypes, with no compiled
part of its own::

    import mc0

    with mc0.Connector({"broker.host": "broker.example.com",
                        "broker.public_key": "/etc/mc0/mc0d.public",
                        "private_key": "/etc/mcollective/zeromq/web1.private"}) as c:
        topic = mc0.topic_agent("mcollective", "rpcutil")
        c.subscribe(topic)
        c.publish(topic, b"ping", {"X-REPLY-TO": "mcollective reply me 42"})
        m = c.receive(timeout_ms=5000)        # None on timeout
        if m is not None:
            print(m.topic, m.sender, m.headers, m.body)

Queues (mc0d keeps a topic's messages while no consumer runs; at least
once) and time-to-lives::

    with mc0.Connector({..., "explicit_ack": True}) as c:
        c.subscribe_queue("mcollective reply admin async", "async")
        m = c.receive(timeout_ms=5000)
        ...                                   # process it, then
        c.ack(m)                              # or let receive acknowledge (no explicit_ack)
        c.publish(topic, b"ping", ttl_ms=60000)   # never sent, nor delivered from a queue, after 60 s
        print(c.stats()["expired"])

Every failing call raises :class:`Error`, which carries libmc0's status
code (``status``, ``status_name``), the text of ``mc0_last_error()``
(``message``) and, for configuration and key-file errors, the setting at
fault (``key``). A :class:`Connector` is thread-safe like the C handle: one
thread may wait in ``receive`` while others publish, and ``close`` from any
thread wakes it (``receive`` then raises ``Error`` with ``MC0_ERR_CLOSED``).
ctypes releases the GIL during each call, so other Python threads run while
one waits in libmc0.

The library is ``library`` when given, else the file named by the
``MC0_LIBRARY`` environment variable, else ``libmc0.so.0`` from the system
loader path (the libmc0-0 package, or ``LD_LIBRARY_PATH=target/release`` in
a build tree).
"""

import ctypes
import json
import os
import threading

__all__ = [
    "Connector", "Error", "Message", "load", "version", "default_port", "curve_keypair",
    "topic_agent", "topic_node", "topic_reply", "topic_for_subscription",
    "OK", "ERR_INVALID_ARGUMENT", "ERR_CONFIG", "ERR_KEY", "ERR_TIMEOUT", "ERR_CLOSED",
    "ERR_BROKER", "ERR_QUEUE_FULL", "ERR_ZMQ", "ERR_PANIC", "ERR_RESOLVE", "ERR_NOT_FOUND",
]

# enum mc0_status (mc0.h): codes are only ever appended there.
OK = 0
ERR_INVALID_ARGUMENT = 1
ERR_CONFIG = 2
ERR_KEY = 3
ERR_TIMEOUT = 4
ERR_CLOSED = 5
ERR_BROKER = 6
ERR_QUEUE_FULL = 7
ERR_ZMQ = 8
ERR_PANIC = 9
ERR_RESOLVE = 10
ERR_NOT_FOUND = 11


class Error(Exception):
    """A libmc0 call failed: ``status`` (an ``ERR_*`` code), ``status_name``
    (``mc0_status_str``), ``message`` (``mc0_last_error``) and ``key`` (the
    configuration key at fault, or None)."""

    def __init__(self, status, status_name, message, key=None):
        self.status = status
        self.status_name = status_name
        self.message = message
        self.key = key
        super().__init__(f"{status_name} ({status}): {message}" + (f" [key {key}]" if key else ""))


_status = ctypes.c_uint32
_handle = ctypes.c_void_p
_text = ctypes.c_char_p
_bytes = ctypes.POINTER(ctypes.c_uint8)
_size_p = ctypes.POINTER(ctypes.c_size_t)

# Every C function this module calls, declared once: name -> (restype, argtypes).
# Functions returning a status are checked by _check; functions returning a
# string to free (mc0_topic_*) return a raw pointer so it can be freed.
_SIGNATURES = {
    "mc0_version": (_text, []),
    "mc0_status_str": (_text, [ctypes.c_uint32]),
    "mc0_default_port": (ctypes.c_uint16, []),
    "mc0_last_error": (_text, []),
    "mc0_last_error_key": (_text, []),
    "mc0_string_free": (None, [ctypes.c_void_p]),
    "mc0_topic_agent": (ctypes.c_void_p, [_text, _text]),
    "mc0_topic_node": (ctypes.c_void_p, [_text, _text]),
    "mc0_topic_reply": (ctypes.c_void_p, [_text, _text, ctypes.c_uint32]),
    "mc0_topic_for_subscription": (ctypes.c_void_p, [_text, _text, _text, _text, ctypes.c_uint32]),
    "mc0_curve_keypair": (_status, [ctypes.c_char_p, ctypes.c_char_p]),
    "mc0_config_new": (_handle, []),
    "mc0_config_set": (_status, [_handle, _text, _text]),
    "mc0_config_free": (None, [_handle]),
    "mc0_connector_new": (_status, [_handle, ctypes.POINTER(_handle)]),
    "mc0_connector_subscribe": (_status, [_handle, _text]),
    "mc0_connector_unsubscribe": (_status, [_handle, _text]),
    "mc0_connector_publish": (_status, [_handle, _text, ctypes.POINTER(_text), ctypes.POINTER(_bytes),
                                        _size_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]),
    "mc0_connector_publish_ttl": (_status, [_handle, _text, ctypes.POINTER(_text), ctypes.POINTER(_bytes),
                                            _size_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
                                            ctypes.c_uint64]),
    "mc0_connector_subscribe_queue": (_status, [_handle, _text, _text]),
    "mc0_connector_ack": (_status, [_handle, ctypes.c_uint64]),
    "mc0_connector_stats_json": (ctypes.c_void_p, [_handle]),
    "mc0_connector_flush": (_status, [_handle, ctypes.c_int32]),
    "mc0_connector_receive": (_status, [_handle, ctypes.c_int32, ctypes.POINTER(_handle)]),
    "mc0_connector_close": (_status, [_handle]),
    "mc0_connector_free": (None, [_handle]),
    "mc0_message_topic": (_text, [_handle]),
    "mc0_message_sender": (_text, [_handle]),
    "mc0_message_sender_key": (_text, [_handle]),
    "mc0_message_header_count": (ctypes.c_size_t, [_handle]),
    "mc0_message_header_name": (_text, [_handle, ctypes.c_size_t]),
    "mc0_message_header_value": (_bytes, [_handle, ctypes.c_size_t, _size_p]),
    "mc0_message_body": (_bytes, [_handle, _size_p]),
    "mc0_message_free": (None, [_handle]),
}

_lib = None
_lib_lock = threading.Lock()


def _check(status, func, _args):
    """errcheck of every status-returning call: runs on the calling thread
    right after the call, so mc0_last_error() is that call's."""
    if status != OK:
        key = _lib.mc0_last_error_key()
        raise Error(status, _lib.mc0_status_str(status).decode(), _lib.mc0_last_error().decode(),
                    key.decode() if key else None)
    return status


def load(library=None):
    """Loads libmc0 (once per process; see the module's doc for where it
    looks) and returns the ctypes library. OSError names what was tried."""
    global _lib
    with _lib_lock:
        if _lib is None:
            path = library or os.environ.get("MC0_LIBRARY") or "libmc0.so.0"
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                raise OSError(f"cannot load libmc0 from {path!r} (argument, MC0_LIBRARY or the "
                              f"system loader path; install libmc0-0): {e}") from e
            for name, (restype, argtypes) in _SIGNATURES.items():
                func = getattr(lib, name)
                func.restype = restype
                func.argtypes = argtypes
                if restype is _status:
                    func.errcheck = _check
            _lib = lib
        return _lib


def _c(text):
    return text.encode() if isinstance(text, str) else text


def _owned_string(ptr, what):
    """Copies a string libmc0 handed over and frees it; NULL is an Error."""
    if not ptr:
        raise Error(ERR_INVALID_ARGUMENT, "invalid argument", f"{what}: {_lib.mc0_last_error().decode()}")
    try:
        return ctypes.string_at(ptr).decode()
    finally:
        _lib.mc0_string_free(ptr)


def version():
    """libmc0's version, e.g. "0.1.0"."""
    return load().mc0_version().decode()


def default_port():
    """The broker port libmc0 uses when broker.port is not set."""
    return load().mc0_default_port()


def curve_keypair():
    """A new CURVE keypair: (public, secret), 40-character Z85 strings."""
    lib = load()
    public, secret = ctypes.create_string_buffer(41), ctypes.create_string_buffer(41)
    lib.mc0_curve_keypair(public, secret)
    return public.value.decode(), secret.value.decode()


def topic_agent(collective, agent):
    """"<collective> <agent>": broadcast requests to an agent."""
    return _owned_string(load().mc0_topic_agent(_c(collective), _c(agent)), "topic_agent")


def topic_node(collective, identity):
    """"<collective> nodes <identity>": directed requests to one node."""
    return _owned_string(load().mc0_topic_node(_c(collective), _c(identity)), "topic_node")


def topic_reply(collective, identity, pid=None):
    """"<collective> reply <identity> <pid>": a client's replies (pid: this process's)."""
    pid = os.getpid() if pid is None else pid
    return _owned_string(load().mc0_topic_reply(_c(collective), _c(identity), pid), "topic_reply")


def topic_for_subscription(kind, agent, collective, identity, pid=None):
    """The topic for MCollective's subscription of type kind ("broadcast",
    "directed" or "reply"), as every binding maps it."""
    pid = os.getpid() if pid is None else pid
    ptr = load().mc0_topic_for_subscription(_c(kind), _c(agent), _c(collective), _c(identity), pid)
    return _owned_string(ptr, "topic_for_subscription")


class Message:
    """A received message, copied out of libmc0 (nothing to free):
    ``topic`` (str), ``sender`` (the name the broker knows the publisher's
    key by, or None), ``sender_key`` (Z85, or None), ``headers`` (dict of
    str -> bytes: the publisher's X- headers, and from mc0d ``EXPIRES-IN``
    and, for a queue delivery, ``QUEUE``, ``DELIVERY`` and ``REDELIVERED``)
    and ``body`` (bytes)."""

    __slots__ = ("topic", "sender", "sender_key", "headers", "body")

    def __init__(self, topic, sender, sender_key, headers, body):
        self.topic, self.sender, self.sender_key, self.headers, self.body = topic, sender, sender_key, headers, body

    def __repr__(self):
        return f"Message(topic={self.topic!r}, sender={self.sender!r}, headers={self.headers!r}, body={self.body!r})"

    @classmethod
    def _take(cls, lib, m):
        """Copies message m and frees it."""
        try:
            n = ctypes.c_size_t()
            headers = {}
            for i in range(lib.mc0_message_header_count(m)):
                value = lib.mc0_message_header_value(m, i, ctypes.byref(n))
                headers[lib.mc0_message_header_name(m, i).decode()] = ctypes.string_at(value, n.value)
            body = lib.mc0_message_body(m, ctypes.byref(n))
            sender, sender_key = lib.mc0_message_sender(m), lib.mc0_message_sender_key(m)
            return cls(lib.mc0_message_topic(m).decode(), sender.decode() if sender else None,
                       sender_key.decode() if sender_key else None, headers, ctypes.string_at(body, n.value))
        finally:
            lib.mc0_message_free(m)


class Connector:
    """A connection to an mc0 broker. ``config`` maps libmc0's keys (the
    plugin.zeromq.* settings without the prefix, docs/CONNECTOR.md) to
    values; an unknown key or bad value raises Error naming it. Connecting
    waits at most connect_timeout (or, with connect_retry, goes on in the
    background). Use it as a context manager, or call close() and free()."""

    def __init__(self, config, library=None):
        self._lib = load(library)
        cfg = self._lib.mc0_config_new()
        if not cfg:
            raise MemoryError("mc0_config_new")
        try:
            for key, value in config.items():
                if isinstance(value, bool):
                    value = "true" if value else "false"
                self._lib.mc0_config_set(cfg, _c(key), _c(str(value)))
            handle = _handle()
            self._lib.mc0_connector_new(cfg, ctypes.byref(handle))
        finally:
            self._lib.mc0_config_free(cfg)
        self._handle = handle

    def _live(self):
        if self._handle is None:
            raise Error(ERR_CLOSED, "closed", "this Connector has been freed")
        return self._handle

    def subscribe(self, topic):
        """Subscribes to topic (counted: subscribe twice, unsubscribe twice)."""
        self._lib.mc0_connector_subscribe(self._live(), _c(topic))

    def subscribe_queue(self, topic, queue):
        """Subscribes to topic as a consumer of its queue named queue: mc0d
        keeps the topic's messages for the queue while no consumer runs and
        hands each to one consumer (at least once: a delivery not
        acknowledged when this connector goes comes again, with the header
        REDELIVERED). receive acknowledges what it hands out, unless the
        config sets explicit_ack (then call ack). Undo with unsubscribe."""
        self._lib.mc0_connector_subscribe_queue(self._live(), _c(topic), _c(queue))

    def ack(self, message):
        """Acknowledges a queue delivery (a Message from receive, or its
        DELIVERY id as an int): the broker forgets it. Needed only with
        explicit_ack; a message not from a queue is ignored."""
        delivery = message.headers.get("DELIVERY") if isinstance(message, Message) else message
        if delivery is not None:
            self._lib.mc0_connector_ack(self._live(), int(delivery))

    def unsubscribe(self, topic):
        self._lib.mc0_connector_unsubscribe(self._live(), _c(topic))

    def publish(self, topic, body, headers=None, ttl_ms=None):
        """Publishes body (bytes or str) to topic with optional headers (a
        dict of str -> bytes or str); kept until the broker acknowledges it.
        With ttl_ms (1 ms to 30 days), once that has passed the message is
        never sent (counted in stats()["expired"]) and mc0d never delivers it
        from a queue."""
        headers = headers or {}
        n = len(headers)
        names = (_text * n)(*[_c(k) for k in headers])
        values = [_c(v) for v in headers.values()]
        buffers = [(ctypes.c_uint8 * len(v)).from_buffer_copy(v) for v in values]
        pointers = (_bytes * n)(*[ctypes.cast(b, _bytes) for b in buffers])
        lens = (ctypes.c_size_t * n)(*[len(v) for v in values])
        body = _c(body)
        if ttl_ms is None:
            self._lib.mc0_connector_publish(self._live(), _c(topic), names, pointers, lens, n, body, len(body))
        else:
            self._lib.mc0_connector_publish_ttl(self._live(), _c(topic), names, pointers, lens, n, body, len(body),
                                                ttl_ms)

    def stats(self):
        """The counters as a dict (mc0_connector_stats_json): sent,
        published, publishes_dropped, received, expired, failovers, broker,
        last_error and more. Valid after close."""
        return json.loads(_owned_string(self._lib.mc0_connector_stats_json(self._live()), "stats"))

    def flush(self, timeout_ms=-1):
        """Waits until everything published so far is acknowledged (negative: no limit)."""
        self._lib.mc0_connector_flush(self._live(), timeout_ms)

    def receive(self, timeout_ms=-1):
        """The next message, or None after timeout_ms (negative: no limit).
        Raises Error (ERR_CLOSED) once the connector is closed."""
        m = _handle()
        try:
            self._lib.mc0_connector_receive(self._live(), timeout_ms, ctypes.byref(m))
        except Error as e:
            if e.status == ERR_TIMEOUT:
                return None
            raise
        return Message._take(self._lib, m)

    def close(self):
        """Sends what is queued and DISCONNECT (within close_timeout) and
        wakes every thread waiting in receive. Idempotent; thread-safe."""
        if self._handle is not None:
            self._lib.mc0_connector_close(self._handle)

    def free(self):
        """Closes and releases the connector (waits for calls in progress)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lib.mc0_connector_free(handle)

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()
        self.free()

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self.free()
