/* How long one flushed 1 KB write takes on this disk, by the ways a
 * journal could make it: what bounds a durable OK per PUT
 * (docs/BENCHMARKS.md, "Queues").
 *
 *   cc -O2 -o /tmp/sync_paths benches/sync_paths.c && /tmp/sync_paths [FILE] [ROUNDS]
 *
 * FILE (default ./sync_paths.tmp, removed afterwards) must be on the disk
 * measured, not tmpfs (which has no O_DIRECT and nothing to flush). Each
 * way writes 2,000 times in place in a 16 MiB file of real zeros, as
 * mc0d's journal does. The AIO ways submit an O_DIRECT write with
 * RWF_DSYNC and wait for its completion by sleeping or by spinning. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { WRITES = 2000, FILE_SIZE = 16 << 20, BLOCK = 4096 };

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int open_or_die(const char *path, int flags) {
    int fd = open(path, flags, 0644);
    if (fd < 0) {
        perror(path);
        exit(2);
    }
    return fd;
}

static void report(const char *way, double started) {
    printf("%-40s %.3f ms per write\n", way, (now_ms() - started) / WRITES);
}

static void aio_write(const char *path, const void *buf, int spin) {
    int fd = open_or_die(path, O_RDWR | O_DIRECT);
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, 8, &ctx) < 0) {
        perror("io_setup");
        exit(2);
    }
    double started = now_ms();
    for (int i = 0; i < WRITES; i++) {
        struct iocb cb;
        memset(&cb, 0, sizeof cb);
        cb.aio_fildes = fd;
        cb.aio_lio_opcode = IOCB_CMD_PWRITE;
        cb.aio_buf = (unsigned long)buf;
        cb.aio_nbytes = BLOCK;
        cb.aio_offset = (long long)i * BLOCK;
        cb.aio_rw_flags = RWF_DSYNC;
        struct iocb *cbs[1] = {&cb};
        if (syscall(SYS_io_submit, ctx, 1, cbs) != 1) {
            perror("io_submit");
            exit(2);
        }
        struct io_event ev;
        struct timespec zero = {0, 0};
        if (spin)
            while (syscall(SYS_io_getevents, ctx, 0, 1, &ev, &zero) < 1) {
            }
        else if (syscall(SYS_io_getevents, ctx, 1, 1, &ev, NULL) != 1) {
            perror("io_getevents");
            exit(2);
        }
        if (ev.res != BLOCK) {
            fprintf(stderr, "AIO write: %lld\n", (long long)ev.res);
            exit(2);
        }
    }
    report(spin ? "AIO O_DIRECT RWF_DSYNC 4 KiB, spinning" : "AIO O_DIRECT RWF_DSYNC 4 KiB, sleeping", started);
    syscall(SYS_io_destroy, ctx);
    close(fd);
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "sync_paths.tmp";
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    void *buf;
    if (posix_memalign(&buf, BLOCK, BLOCK) != 0)
        return 2;
    memset(buf, 'x', BLOCK);
    int fd = open_or_die(path, O_RDWR | O_CREAT | O_TRUNC);
    char *zeros = calloc(1, FILE_SIZE);
    if (pwrite(fd, zeros, FILE_SIZE, 0) != FILE_SIZE || fsync(fd) != 0) {
        perror(path);
        return 2;
    }
    close(fd);
    for (int round = 1; round <= rounds; round++) {
        printf("round %d\n", round);
        fd = open_or_die(path, O_RDWR);
        double started = now_ms();
        for (int i = 0; i < WRITES; i++)
            if (pwrite(fd, buf, 1024, (off_t)i * 1024) != 1024 || fdatasync(fd) != 0) {
                perror("write + fdatasync");
                return 2;
            }
        report("1 KB write + fdatasync (mc0d's journal)", started);
        close(fd);

        fd = open_or_die(path, O_RDWR | O_DIRECT | O_DSYNC);
        started = now_ms();
        for (int i = 0; i < WRITES; i++)
            if (pwrite(fd, buf, BLOCK, (off_t)i * BLOCK) != BLOCK) {
                perror("O_DIRECT|O_DSYNC write");
                return 2;
            }
        report("O_DIRECT|O_DSYNC 4 KiB write", started);
        close(fd);

        aio_write(path, buf, 0);
        aio_write(path, buf, 1);
    }
    unlink(path);
    return 0;
}
