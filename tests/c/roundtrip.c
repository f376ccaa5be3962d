/*
 * The C ABI end to end: error paths that need no broker, then a round trip
 * through a running mc0d, a receive timeout, and close() waking a receiver
 * blocked in another thread. Run by tests/c_abi.rs (also under valgrind).
 *
 * usage: roundtrip HOST PORT BROKER_PUBLIC_KEY PUBLIC_KEY PRIVATE_KEY [TIMEOUT_SECONDS]
 * Exits 0 and prints "roundtrip: ok" on success; prints the failed check and
 * exits 1 otherwise.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mc0.h"

static int failures = 0;

#define CHECK(cond)                                                                         \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, mc0_last_error());                                               \
            failures++;                                                                     \
        }                                                                                   \
    } while (0)

#define REQUIRE(cond)                                   \
    do {                                                \
        CHECK(cond);                                    \
        if (failures) {                                 \
            fprintf(stderr, "roundtrip: giving up\n");  \
            exit(1);                                    \
        }                                               \
    } while (0)

static int contains(const char *haystack, const char *needle) {
    return haystack != NULL && strstr(haystack, needle) != NULL;
}

/* Log lines arrive from the library's threads. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_lines = 0;
static int log_bad_level = 0;

static void on_log(void *user_data, int32_t level, const char *message) {
    int *tag = (int *)user_data;
    pthread_mutex_lock(&log_lock);
    log_lines++;
    if (level < 1 || level > 4 || message == NULL || *tag != 42) {
        log_bad_level++;
    }
    pthread_mutex_unlock(&log_lock);
}

static void sleep_ms(long ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static void no_broker_needed(const char *missing_key_file) {
    char pub[41], sec[41];
    char *s;
    mc0_config *cfg;
    mc0_connector *c = (mc0_connector *)&c; /* must be overwritten with NULL */
    mc0_message *m = (mc0_message *)&m;
    size_t len = 99;

    CHECK(strlen(mc0_version()) > 0);
    CHECK(strcmp(mc0_last_error(), "") == 0);

    /* NULL arguments are errors, never crashes. */
    CHECK(mc0_config_set(NULL, "broker.host", "x") == MC0_ERR_INVALID_ARGUMENT);
    CHECK(contains(mc0_last_error(), "NULL"));
    CHECK(mc0_connector_new(NULL, &c) == MC0_ERR_INVALID_ARGUMENT);
    CHECK(c == NULL);
    CHECK(mc0_connector_subscribe(NULL, "t") == MC0_ERR_INVALID_ARGUMENT);
    CHECK(mc0_connector_publish(NULL, "t", NULL, NULL, NULL, 0, NULL, 0) == MC0_ERR_INVALID_ARGUMENT);
    CHECK(mc0_connector_receive(NULL, 0, &m) == MC0_ERR_INVALID_ARGUMENT);
    CHECK(m == NULL);
    CHECK(mc0_connector_close(NULL) == MC0_ERR_INVALID_ARGUMENT);
    CHECK(mc0_message_topic(NULL) == NULL);
    CHECK(mc0_message_body(NULL, &len) == NULL && len == 0);
    CHECK(mc0_topic_agent(NULL, "rpcutil") == NULL);
    CHECK(mc0_curve_keypair(NULL, sec) == MC0_ERR_INVALID_ARGUMENT);
    mc0_connector_free(NULL);
    mc0_message_free(NULL);
    mc0_config_free(NULL);
    mc0_string_free(NULL);

    /* Topic names. */
    s = mc0_topic_agent("mcollective", "rpcutil");
    CHECK(s != NULL && strcmp(s, "mcollective rpcutil") == 0);
    mc0_string_free(s);
    s = mc0_topic_node("mcollective", "web1");
    CHECK(s != NULL && strcmp(s, "mcollective nodes web1") == 0);
    mc0_string_free(s);
    s = mc0_topic_reply("mcollective", "admin", 4242);
    CHECK(s != NULL && strcmp(s, "mcollective reply admin 4242") == 0);
    mc0_string_free(s);
    s = mc0_topic_for_subscription("directed", "rpcutil", "mcollective", "web1", 1);
    CHECK(s != NULL && strcmp(s, "mcollective nodes web1") == 0);
    mc0_string_free(s);
    CHECK(mc0_topic_for_subscription("queue", "rpcutil", "mcollective", "web1", 1) == NULL);
    CHECK(contains(mc0_last_error(), "queue"));
    CHECK(mc0_default_port() > 0);

    /* Status codes: names, and the old spelling of the type still works. */
    {
        enum mc0_status old_style = MC0_ERR_TIMEOUT;
        CHECK(strcmp(mc0_status_str(old_style), "timeout") == 0);
        CHECK(strcmp(mc0_status_str(MC0_ERR_NOT_FOUND), "not found") == 0);
        CHECK(strcmp(mc0_status_str(9999), "unknown status") == 0);
    }

    /* Keypairs. */
    CHECK(mc0_curve_keypair(pub, sec) == MC0_OK);
    CHECK(strlen(pub) == 40 && strlen(sec) == 40 && strcmp(pub, sec) != 0);

    /* Config errors name the key or the file. */
    cfg = mc0_config_new();
    REQUIRE(cfg != NULL);
    CHECK(mc0_config_set(cfg, "no.such.key", "1") == MC0_ERR_CONFIG);
    CHECK(contains(mc0_last_error(), "no.such.key"));
    CHECK(mc0_config_set(cfg, "heartbeat", "soon") == MC0_ERR_CONFIG);
    CHECK(contains(mc0_last_error(), "heartbeat"));
    CHECK(mc0_config_set(cfg, "broker.port", "99999") == MC0_ERR_CONFIG);
    CHECK(contains(mc0_last_error(), "broker.port"));
    CHECK(mc0_last_error_key() != NULL && strcmp(mc0_last_error_key(), "broker.port") == 0);
    CHECK(mc0_connector_new(cfg, &c) == MC0_ERR_CONFIG);
    CHECK(contains(mc0_last_error(), "broker.host"));
    CHECK(mc0_config_set(cfg, "broker.host", "127.0.0.1") == MC0_OK);
    CHECK(mc0_config_set(cfg, "broker.public_key", missing_key_file) == MC0_OK);
    CHECK(mc0_config_set(cfg, "private_key", missing_key_file) == MC0_OK);
    CHECK(mc0_connector_new(cfg, &c) == MC0_ERR_KEY);
    CHECK(contains(mc0_last_error(), missing_key_file));
    CHECK(mc0_last_error_key() != NULL && strcmp(mc0_last_error_key(), "broker.public_key") == 0);
    CHECK(c == NULL);
    mc0_config_free(cfg);

    /* A host name that does not resolve is reported as such, naming it. */
    cfg = mc0_config_new();
    REQUIRE(cfg != NULL);
    CHECK(mc0_config_set(cfg, "broker.host", "no-such-host.invalid") == MC0_OK);
    CHECK(mc0_config_set(cfg, "curve", "false") == MC0_OK);
    CHECK(mc0_connector_new(cfg, &c) == MC0_ERR_RESOLVE);
    CHECK(contains(mc0_last_error(), "no-such-host.invalid"));
    CHECK(c == NULL);
    mc0_config_free(cfg);
}

struct receiver {
    mc0_connector *c;
    mc0_status status;
};

static void *blocked_receive(void *arg) {
    struct receiver *r = (struct receiver *)arg;
    mc0_message *m = NULL;
    r->status = mc0_connector_receive(r->c, -1, &m);
    mc0_message_free(m);
    return NULL;
}

int main(int argc, char **argv) {
    const char *host, *port, *broker_public, *public_key, *private_key, *timeout;
    char own_key[64];
    FILE *key_file;
    int tag = 42;
    char *reply_topic, *json;
    mc0_config *cfg;
    mc0_connector *c = NULL;
    mc0_message *m = NULL;
    const char *names[2] = {"X-REPLY-TO", "X-BIN"};
    const uint8_t bin[5] = {0, 255, 1, 0, 7};
    const uint8_t *values[2];
    size_t lens[2];
    uint8_t body[300];
    const uint8_t *p;
    size_t len, i;
    int32_t wait_ms;
    pthread_t thread;
    struct receiver r;
    char missing[4096];

    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT BROKER_PUBLIC_KEY PUBLIC_KEY PRIVATE_KEY [TIMEOUT_SECONDS]\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = argv[2];
    broker_public = argv[3];
    public_key = argv[4];
    private_key = argv[5];
    timeout = argc > 6 ? argv[6] : "20";
    wait_ms = (int32_t)(atoi(timeout) * 1000);

    snprintf(missing, sizeof missing, "%s.does-not-exist", public_key);
    no_broker_needed(missing);

    mc0_set_log_callback(on_log, &tag, 4);

    cfg = mc0_config_new();
    REQUIRE(cfg != NULL);
    REQUIRE(mc0_config_set(cfg, "broker.host", host) == MC0_OK);
    REQUIRE(mc0_config_set(cfg, "broker.port", port) == MC0_OK);
    REQUIRE(mc0_config_set(cfg, "broker.public_key", broker_public) == MC0_OK);
    REQUIRE(mc0_config_set(cfg, "public_key", public_key) == MC0_OK);
    REQUIRE(mc0_config_set(cfg, "private_key", private_key) == MC0_OK);
    REQUIRE(mc0_config_set(cfg, "plugin.zeromq.identity", "c-test") == MC0_OK);
    REQUIRE(mc0_config_set(cfg, "connect_timeout", timeout) == MC0_OK);
    REQUIRE(mc0_connector_new(cfg, &c) == MC0_OK);
    REQUIRE(c != NULL);

    key_file = fopen(public_key, "r");
    REQUIRE(key_file != NULL && fgets(own_key, sizeof own_key, key_file) != NULL);
    fclose(key_file);

    reply_topic = mc0_topic_reply("mcollective", "c-test", 1);
    REQUIRE(mc0_connector_subscribe(c, reply_topic) == MC0_OK);

    /* Binary headers and body survive the trip. */
    values[0] = (const uint8_t *)reply_topic;
    lens[0] = strlen(reply_topic);
    values[1] = bin;
    lens[1] = sizeof bin;
    for (i = 0; i < sizeof body; i++) {
        body[i] = (uint8_t)(i * 7);
    }
    REQUIRE(mc0_connector_publish(c, reply_topic, names, values, lens, 2, body, sizeof body) == MC0_OK);
    REQUIRE(mc0_connector_receive(c, wait_ms, &m) == MC0_OK);
    REQUIRE(m != NULL);
    CHECK(strcmp(mc0_message_topic(m), reply_topic) == 0);
    CHECK(mc0_message_header_count(m) == 2);
    CHECK(strcmp(mc0_message_header_name(m, 0), "X-REPLY-TO") == 0);
    CHECK(mc0_message_header_name(m, 2) == NULL);
    p = mc0_message_header(m, "X-BIN", &len);
    CHECK(p != NULL && len == sizeof bin && memcmp(p, bin, len) == 0);
    p = mc0_message_header_value(m, 0, &len);
    CHECK(p != NULL && len == strlen(reply_topic) && memcmp(p, reply_topic, len) == 0);
    CHECK(mc0_message_header(m, "X-NONE", &len) == NULL && len == 0);
    CHECK(mc0_message_header_find(m, "X-BIN", &p, &len) == MC0_OK);
    CHECK(p != NULL && len == sizeof bin && memcmp(p, bin, len) == 0);
    CHECK(mc0_message_header_find(m, "X-NONE", &p, &len) == MC0_ERR_NOT_FOUND && p == NULL && len == 0);
    CHECK(mc0_message_header_find(NULL, "X-NONE", &p, &len) == MC0_ERR_INVALID_ARGUMENT);
    p = mc0_message_body(m, &len);
    CHECK(p != NULL && len == sizeof body && memcmp(p, body, len) == 0);
    json = mc0_message_headers_json(m);
    CHECK(contains(json, "\"X-REPLY-TO\":\"mcollective reply c-test 1\""));
    CHECK(!contains(json, "SENDER"));
    mc0_string_free(json);
    /* mc0d's stamp: our own key (the broker has no allowlist, so no name). */
    CHECK(mc0_message_sender(m) == NULL);
    CHECK(mc0_message_sender_key(m) != NULL && strncmp(mc0_message_sender_key(m), own_key, 40) == 0);
    CHECK(mc0_message_sender_key(NULL) == NULL);
    mc0_message_free(m);
    m = NULL;

    /* An empty body, NULL allowed for it and for the header arrays. */
    REQUIRE(mc0_connector_publish(c, reply_topic, NULL, NULL, NULL, 0, NULL, 0) == MC0_OK);
    REQUIRE(mc0_connector_receive(c, wait_ms, &m) == MC0_OK);
    p = mc0_message_body(m, &len);
    CHECK(p != NULL && len == 0);
    CHECK(mc0_message_header_count(m) == 0);
    mc0_message_free(m);
    m = NULL;

    /* Errors a connected caller can hit. */
    CHECK(mc0_connector_receive(c, 50, &m) == MC0_ERR_TIMEOUT);
    CHECK(m == NULL);
    names[0] = "ID";
    CHECK(mc0_connector_publish(c, reply_topic, names, values, lens, 1, NULL, 0) == MC0_ERR_INVALID_ARGUMENT);
    CHECK(contains(mc0_last_error(), "ID"));
    CHECK(mc0_connector_publish(c, "", NULL, NULL, NULL, 0, NULL, 0) == MC0_ERR_INVALID_ARGUMENT);
    CHECK(mc0_connector_publish(c, reply_topic, NULL, NULL, NULL, 0, NULL, 5) == MC0_ERR_INVALID_ARGUMENT);
    CHECK(mc0_connector_receive(c, 0, NULL) == MC0_ERR_INVALID_ARGUMENT);
    CHECK(mc0_connector_flush(c, wait_ms) == MC0_OK);
    /* Negative: no limit, as for receive (nothing is pending here). */
    CHECK(mc0_connector_flush(c, -1) == MC0_OK);
    /* Counters as JSON: the PUTs above were sent and acknowledged. */
    char *s = mc0_connector_stats_json(c);
    CHECK(s != NULL && contains(s, "\"handshakes\":1") && contains(s, "\"acknowledged\":")
          && contains(s, "\"last_error\":null"));
    mc0_string_free(s);
    CHECK(mc0_connector_stats_json(NULL) == NULL);
    CHECK(mc0_connector_unsubscribe(c, reply_topic) == MC0_OK);

    /* close() from this thread wakes a receive blocked in another one. */
    r.c = c;
    r.status = MC0_OK;
    REQUIRE(pthread_create(&thread, NULL, blocked_receive, &r) == 0);
    sleep_ms(100);
    CHECK(mc0_connector_close(c) == MC0_OK);
    pthread_join(thread, NULL);
    CHECK(r.status == MC0_ERR_CLOSED);
    CHECK(mc0_connector_close(c) == MC0_OK);
    CHECK(mc0_connector_publish(c, reply_topic, NULL, NULL, NULL, 0, NULL, 0) == MC0_ERR_CLOSED);
    mc0_connector_free(c);
    mc0_string_free(reply_topic);

    /* free() while another thread is blocked in receive: it wakes that
     * thread and waits for it to leave before releasing the handle (the
     * waiting itself is proven by a unit test in src/ffi/connector.rs). */
    REQUIRE(mc0_connector_new(cfg, &c) == MC0_OK);
    mc0_config_free(cfg);
    r.c = c;
    r.status = MC0_OK;
    REQUIRE(pthread_create(&thread, NULL, blocked_receive, &r) == 0);
    sleep_ms(100);
    mc0_connector_free(c);
    pthread_join(thread, NULL);
    CHECK(r.status == MC0_ERR_CLOSED);

    mc0_set_log_callback(NULL, NULL, 0);
    pthread_mutex_lock(&log_lock);
    CHECK(log_lines > 0);
    CHECK(log_bad_level == 0);
    pthread_mutex_unlock(&log_lock);

    if (failures) {
        fprintf(stderr, "roundtrip: %d checks failed\n", failures);
        return 1;
    }
    printf("roundtrip: ok\n");
    return 0;
}
