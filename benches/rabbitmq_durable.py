#!/usr/bin/env python3
"""RabbitMQ's side of issue 14's durable-queue comparison (docs/BENCHMARKS.md).

A durable queue, persistent 1 KB messages, one producer and one consumer
over pika on loopback, in three shapes mc0d runs too (mc0-bench queue):

  confirm   one publisher confirm awaited per message (msg/s, p99 to confirm)
  pipelined up to --window messages awaiting their confirm (msg/s, p99)
  consume   a consumer taking --messages persistent messages from the queue,
            acknowledging each one (msg/s)

Run it through benches/queues_vs_rabbitmq.sh, which starts and stops a
private rabbitmq-server; this script only needs its AMQP port. Prints one
`MEASURE` line per shape.
"""

import argparse
import collections
import time

import pika

QUEUE = "mc0-bench-durable"
BODY = b"x" * 1024
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def p99(latencies):
    latencies = sorted(latencies)
    return latencies[len(latencies) * 99 // 100] * 1000.0


def declare(channel):
    channel.queue_declare(queue=QUEUE, durable=True)
    channel.queue_purge(queue=QUEUE)


def confirm_each(params, n):
    """Publishes n messages, waiting for each one's confirm."""
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    declare(channel)
    channel.confirm_delivery()
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        sent = time.perf_counter()
        channel.basic_publish("", QUEUE, BODY, PERSISTENT, mandatory=False)
        latencies.append(time.perf_counter() - sent)
    took = time.perf_counter() - start
    connection.close()
    return n / took, p99(latencies)


def pipelined(params, n, window):
    """Publishes n messages with up to `window` unconfirmed (pika's
    asynchronous connection, confirms may cover several messages)."""
    state = {"next": 0, "confirmed": 0, "start": 0.0, "took": 0.0}
    sent_at = collections.OrderedDict()
    latencies = []

    def publish_more(channel):
        while state["next"] < n and state["next"] - state["confirmed"] < window:
            state["next"] += 1
            sent_at[state["next"]] = time.perf_counter()
            channel.basic_publish("", QUEUE, BODY, PERSISTENT)

    def on_confirm(frame, channel):
        tag = frame.method.delivery_tag
        now = time.perf_counter()
        done = [t for t in sent_at if t <= tag] if frame.method.multiple else [tag]
        for t in done:
            latencies.append(now - sent_at.pop(t))
        state["confirmed"] += len(done)
        if state["confirmed"] >= n:
            state["took"] = now - state["start"]
            channel.connection.close()
        else:
            publish_more(channel)

    def on_purged(_frame, channel):
        channel.confirm_delivery(lambda frame: on_confirm(frame, channel))
        state["start"] = time.perf_counter()
        publish_more(channel)

    def on_channel(channel):
        channel.queue_declare(
            QUEUE,
            durable=True,
            callback=lambda _f: channel.queue_purge(QUEUE, callback=lambda f: on_purged(f, channel)),
        )

    connection = pika.SelectConnection(
        params,
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, _reason: c.ioloop.stop(),
    )
    connection.ioloop.start()
    if state["confirmed"] < n:
        raise SystemExit(f"pipelined: only {state['confirmed']} of {n} confirmed")
    return n / state["took"], p99(latencies)


def consume(params, n, window):
    """Fills the queue with n messages, then consumes them acknowledging
    each one (prefetch `window`)."""
    pipelined(params, n, window)
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=window)
    got = 0
    start = time.perf_counter()
    for method, _props, _body in channel.consume(QUEUE, auto_ack=False):
        channel.basic_ack(method.delivery_tag)
        got += 1
        if got == n:
            break
    took = time.perf_counter() - start
    channel.cancel()
    connection.close()
    return n / took


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--messages", type=int, default=20000, help="per pipelined/consume run")
    parser.add_argument("--confirm-messages", type=int, default=2000, help="for the confirm-per-message shape")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--shapes", default="confirm,pipelined,consume")
    args = parser.parse_args()
    params = pika.ConnectionParameters(host="127.0.0.1", port=args.port)
    shapes = args.shapes.split(",")
    if "confirm" in shapes:
        rate, tail = confirm_each(params, args.confirm_messages)
        print(f"MEASURE rabbitmq confirm-per-message: {args.confirm_messages} x 1 KB: {rate:.0f} msg/s, p99 {tail:.2f} ms")
    if "pipelined" in shapes:
        rate, tail = pipelined(params, args.messages, args.window)
        print(f"MEASURE rabbitmq pipelined: {args.messages} x 1 KB, window {args.window}: {rate:.0f} msg/s, p99 {tail:.2f} ms")
    if "consume" in shapes:
        rate = consume(params, args.messages, args.window)
        print(f"MEASURE rabbitmq consume-with-acks: {args.messages} x 1 KB, prefetch {args.window}: {rate:.0f} msg/s")


if __name__ == "__main__":
    main()
