/* alloc_test: the 2008 thread's alloc-test, against /dev/mem_notify.
 *
 *   alloc_test [-d PATH] [-r MB_PER_S] [-m MAX_MB]
 *
 * Opens the device, then allocates anonymous memory in 1 MiB chunks (malloc,
 * every page written non-zero) at MB_PER_S (default 10: one chunk every
 * 100 ms), waiting in poll() on the device until the next chunk is due, so
 * a notification is seen at once.  The memory is freed by exiting.
 *
 * Output on stdout, one line each, flushed at once (mono_ms: CLOCK_MONOTONIC
 * in milliseconds):
 *   START <mono_ms> mb_per_s=<rate> max_mb=<max>     the device is open
 *   ALLOC <mono_ms> <mb>                              every 10 MB
 *   NOTIFIED <mono_ms> allocated_mb=<n> mem_available_kib=<kib> line=<line>
 *                                  the device woke us: exit 0
 *   GAVE_UP <mono_ms> allocated_mb=<n> reason=<malloc|max_mb>: exit 1
 *   ERROR <mono_ms> <what>         POLLERR/POLLHUP/POLLNVAL or a failed read: exit 3
 * mem_available_kib is MemAvailable from /proc/meminfo when woken (-1 if
 * unreadable).  Exit 2: bad usage or the device cannot be opened.
 *
 * C99 and libc only, to be linked statically for the qemu guest.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1024 * 1024)
#define LINE_MAX_BYTES 512
#define REPORT_EVERY_MB 10

static const char *prog = "alloc_test";

/* The chunks, chained through their first word: reachable from a global,
 * so the compiler cannot drop the allocations. */
static void *volatile chunks;

static long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static void usage(const char *why)
{
    if (why)
        fprintf(stderr, "%s: %s\n", prog, why);
    fprintf(stderr, "usage: %s [-d PATH] [-r MB_PER_S] [-m MAX_MB]\n", prog);
    exit(2);
}

/* MemAvailable in KiB from /proc/meminfo, or -1. */
static long mem_available_kib(void)
{
    char row[256];
    long kib = -1;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    while (fgets(row, sizeof row, f))
        if (sscanf(row, "MemAvailable: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

static void device_error(long long t_ms, const char *what)
{
    out("ERROR %lld %s\n", t_ms, what);
    exit(3);
}

int main(int argc, char **argv)
{
    const char *path = "/dev/mem_notify";
    double rate = 10;
    long max_mb = 0, mb = 0;
    long long start, interval_ns;
    int fd, opt;
    char *end;

    if (argc > 0 && argv[0][0])
        prog = argv[0];
    while ((opt = getopt(argc, argv, "d:r:m:")) != -1) {
        switch (opt) {
        case 'd': path = optarg; break;
        case 'r':
            errno = 0;
            rate = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(rate >= 0.001) || rate > 100000)
                usage("bad rate (MB/s, 0.001 to 100000)");
            break;
        case 'm':
            errno = 0;
            max_mb = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || max_mb < 0)
                usage("bad maximum (MB, 0: none)");
            break;
        default: usage(NULL);
        }
    }
    if (optind != argc)
        usage("unexpected argument");
    interval_ns = (long long)(1e9 / rate);
    if (interval_ns < 1)
        interval_ns = 1;

    fd = open(path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", prog, path, strerror(errno));
        return 2;
    }
    start = mono_ns();
    out("START %lld mb_per_s=%g max_mb=%ld\n", start / 1000000, rate, max_mb);

    for (;;) {
        struct pollfd p = { fd, POLLIN, 0 };
        long long due = start + mb * interval_ns, left = due - mono_ns();
        long long left_ms = left <= 0 ? 0 : (left + 999999) / 1000000;
        int n = poll(&p, 1, left_ms > INT_MAX ? INT_MAX : (int)left_ms);
        long long t = mono_ns() / 1000000;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "%s: poll: %s\n", prog, strerror(errno));
            return 3;
        }
        if (p.revents & POLLIN) {
            char buf[LINE_MAX_BYTES];
            ssize_t got = read(fd, buf, sizeof buf - 1), i;
            if (got < 0) {
                char what[128];
                snprintf(what, sizeof what, "read: %s", strerror(errno));
                device_error(t, what);
            }
            if (got == 0)
                device_error(t, "read: end of file");
            while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r'))
                got--;
            for (i = 0; i < got; i++)
                if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
                    buf[i] = '?';
            buf[got] = '\0';
            out("NOTIFIED %lld allocated_mb=%ld mem_available_kib=%ld line=%s\n",
                t, mb, mem_available_kib(), buf);
            return 0;
        }
        if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) {
            char what[64];
            snprintf(what, sizeof what, "poll%s%s%s",
                     p.revents & POLLERR ? " POLLERR" : "",
                     p.revents & POLLHUP ? " POLLHUP" : "",
                     p.revents & POLLNVAL ? " POLLNVAL" : "");
            device_error(t, what);
        }
        if (mono_ns() < due)
            continue;  /* woken early without an event */
        if (max_mb && mb >= max_mb) {
            out("GAVE_UP %lld allocated_mb=%ld reason=max_mb\n", t, mb);
            return 1;
        }
        {
            void **chunk = malloc(CHUNK);
            if (!chunk) {
                out("GAVE_UP %lld allocated_mb=%ld reason=malloc\n", t, mb);
                return 1;
            }
            memset(chunk, 0x5a, CHUNK);  /* every page, so it is resident */
            *chunk = chunks;
            chunks = chunk;
        }
        mb++;
        if (mb % REPORT_EVERY_MB == 0)
            out("ALLOC %lld %ld\n", mono_ns() / 1000000, mb);
    }
}
