/* mem_notify_wait: wait for memory-pressure wakeups on /dev/mem_notify.
 *
 *   mem_notify_wait [-d PATH] [-c COUNT] [-n WAKES] [-t SECONDS] [-s SIGNO]
 *                   [-w TEXT] [-q]
 *
 * Opens COUNT files of the device (each open() is its own file), writes TEXT
 * to each (-w, e.g. "low_kib 8192 leave_kib 16384"), then waits for wakes:
 * all files in one poll() call, or with -s, signal SIGNO registered on every
 * file (ioctl MEMNOTIFY_SETSIG) and waited for with sigtimedwait().
 *
 * Output on stdout, one line each, flushed at once:
 *   READY <count>                      all files open and set up
 *   WAKE <mono_ms> <index> <line>      a woken file and the line it read
 *                                      (with -q nothing is read: "-")
 *   SIG <mono_ms> <signo>              a signal (then every readable file
 *                                      is read and gets a WAKE line)
 *   ERROR <mono_ms> <index> <what>     POLLERR/POLLHUP/POLLNVAL or a failed read
 *   DONE wakes=<n>                     at the end (WAKES reached or -t expired)
 * mono_ms is CLOCK_MONOTONIC in milliseconds, taken when poll() (or
 * sigtimedwait()) returned.
 *
 * Exit status: 0 done, 2 bad usage or set-up failure (open, write, ioctl;
 * message on stderr), 3 device error.
 *
 * With -q a woken file is not read, so its wakeup is not acknowledged and it
 * stays readable: it is then only watched for errors (no spinning).
 *
 * C99 and libc only, to be linked statically for the qemu guest.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MEMNOTIFY_SETSIG _IOW('M', 1, int)
#define MAX_FILES 2000
#define LINE_MAX_BYTES 512
#define EXIT_USAGE 2
#define EXIT_DEVICE 3

static const char *prog = "mem_notify_wait";

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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
    fprintf(stderr, "usage: %s [-d PATH] [-c COUNT] [-n WAKES] [-t SECONDS] "
            "[-s SIGNO] [-w TEXT] [-q]\n", prog);
    exit(EXIT_USAGE);
}

static long parse_long(const char *s, long lo, long hi, const char *what)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "%s: bad %s %s (%ld..%ld)\n", prog, what, s, lo, hi);
        usage(NULL);
    }
    return v;
}

/* Make room for `count` open files besides stdin/out/err. */
static void raise_nofile(long count)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)count + 16;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
        return;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
        struct rlimit more = { want, want };
        if (setrlimit(RLIMIT_NOFILE, &more) == 0)  /* root only */
            return;
    }
    rl.rlim_cur = (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) ? rl.rlim_max : want;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static void die_setup(const char *what, const char *path, long index)
{
    fprintf(stderr, "%s: %s %s (file %ld): %s\n", prog, what, path, index, strerror(errno));
    exit(EXIT_USAGE);
}

static void device_error(long long t, long index, const char *what)
{
    out("ERROR %lld %ld %s\n", t, index, what);
    exit(EXIT_DEVICE);
}

static void check_revents(long long t, long index, short revents)
{
    char what[64];
    if (!(revents & (POLLERR | POLLHUP | POLLNVAL)))
        return;
    snprintf(what, sizeof what, "poll%s%s%s",
             revents & POLLERR ? " POLLERR" : "",
             revents & POLLHUP ? " POLLHUP" : "",
             revents & POLLNVAL ? " POLLNVAL" : "");
    device_error(t, index, what);
}

/* Read the file's one line and print its WAKE line (ERROR and exit 3 if the
 * read fails).  With `quiet` nothing is read and the file is only watched
 * for errors from now on. */
static void wake(struct pollfd *p, long long t, long index, int quiet)
{
    char buf[LINE_MAX_BYTES];
    ssize_t n;
    ssize_t i;
    if (quiet) {
        p->events = 0;  /* unacknowledged: it stays readable; errors only */
        out("WAKE %lld %ld -\n", t, index);
        return;
    }
    n = read(p->fd, buf, sizeof buf - 1);
    if (n < 0) {
        char what[128];
        snprintf(what, sizeof what, "read: %s", strerror(errno));
        device_error(t, index, what);
    }
    if (n == 0)
        device_error(t, index, "read: end of file");
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    for (i = 0; i < n; i++)
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
            buf[i] = '?';  /* one output line per wake, whatever came */
    buf[n] = '\0';
    out("WAKE %lld %ld %s\n", t, index, buf);
}

/* Milliseconds left until `deadline` (-1: none) as a poll() timeout. */
static int ms_left(long long deadline)
{
    long long left;
    if (deadline < 0)
        return -1;
    left = deadline - mono_ms();
    if (left <= 0)
        return 0;
    return left > INT_MAX ? INT_MAX : (int)left;
}

int main(int argc, char **argv)
{
    const char *path = "/dev/mem_notify";
    const char *text = NULL;
    long count = 1, max_wakes = 1, signo = 0, wakes = 0;
    double timeout_s = -1;
    long long deadline = -1;
    int quiet = 0, opt;
    long i;
    struct pollfd *fds;
    sigset_t set;

    if (argc > 0 && argv[0][0])
        prog = argv[0];
    while ((opt = getopt(argc, argv, "d:c:n:t:s:w:q")) != -1) {
        switch (opt) {
        case 'd': path = optarg; break;
        case 'c': count = parse_long(optarg, 1, MAX_FILES, "count"); break;
        case 'n': max_wakes = parse_long(optarg, 0, LONG_MAX, "wakes"); break;
        case 's':
            signo = parse_long(optarg, 1, SIGRTMAX, "signal");
            if (signo == SIGKILL || signo == SIGSTOP)
                usage("SIGKILL and SIGSTOP cannot be waited for");
            if (signo > 31 && signo < SIGRTMIN)
                usage("signals 32 to SIGRTMIN-1 are libc's own");
            break;
        case 't': {
            char *end;
            errno = 0;
            timeout_s = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(timeout_s >= 0) || timeout_s > 1e9)
                usage("bad timeout (seconds, >= 0)");
            break;
        }
        case 'w': text = optarg; break;
        case 'q': quiet = 1; break;
        default: usage(NULL);
        }
    }
    if (optind != argc)
        usage("unexpected argument");

    fds = calloc((size_t)count, sizeof *fds);
    if (!fds) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return EXIT_USAGE;
    }
    raise_nofile(count);
    sigemptyset(&set);
    if (signo) {
        sigaddset(&set, (int)signo);
        /* blocked before the first ioctl: no wake can kill us */
        if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
            die_setup("sigprocmask for", path, 0);
    }
    for (i = 0; i < count; i++) {
        fds[i].fd = open(path, O_RDONLY);
        if (fds[i].fd < 0)
            die_setup("cannot open", path, i);
        fds[i].events = POLLIN;
        if (text) {
            size_t len = strlen(text);
            ssize_t n = write(fds[i].fd, text, len);
            if (n < 0)
                die_setup("write of the thresholds to", path, i);
            if ((size_t)n != len) {
                fprintf(stderr, "%s: short write to %s (file %ld): %zd of %zu bytes\n",
                        prog, path, i, n, len);
                return EXIT_USAGE;
            }
        }
        if (signo) {
            int s = (int)signo;
            if (ioctl(fds[i].fd, MEMNOTIFY_SETSIG, &s) != 0)
                die_setup("ioctl MEMNOTIFY_SETSIG on", path, i);
        }
    }
    if (timeout_s >= 0)
        deadline = mono_ms() + (long long)(timeout_s * 1000.0 + 0.5);
    out("READY %ld\n", count);

    while (max_wakes == 0 || wakes < max_wakes) {
        long long t;
        int polled, timeout = ms_left(deadline);
        if (deadline >= 0 && timeout == 0)
            break;
        if (signo) {
            /* Wait at most 1 s at a time: between signals, the files are
             * checked for errors (a dead provider sends no signal). */
            siginfo_t info;
            struct timespec ts;
            int got, step = (timeout < 0 || timeout > 1000) ? 1000 : timeout;
            ts.tv_sec = step / 1000;
            ts.tv_nsec = (long)(step % 1000) * 1000000L;
            got = sigtimedwait(&set, &info, &ts);
            t = mono_ms();
            if (got < 0 && errno != EAGAIN && errno != EINTR) {
                fprintf(stderr, "%s: sigtimedwait: %s\n", prog, strerror(errno));
                return EXIT_USAGE;
            }
            if (got > 0)
                out("SIG %lld %d\n", t, got);
            polled = poll(fds, (nfds_t)count, 0);
            if (polled < 0) {
                if (errno == EINTR)
                    continue;
                fprintf(stderr, "%s: poll: %s\n", prog, strerror(errno));
                return EXIT_DEVICE;
            }
            for (i = 0; i < count && polled > 0; i++) {
                short re = fds[i].revents;
                if (got > 0 && (re & POLLIN)) {
                    wake(&fds[i], t, i, quiet);
                    if (++wakes == max_wakes)
                        break;
                }
                check_revents(t, i, re);
            }
            continue;
        }
        polled = poll(fds, (nfds_t)count, timeout);
        t = mono_ms();
        if (polled < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "%s: poll: %s\n", prog, strerror(errno));
            return EXIT_DEVICE;
        }
        for (i = 0; i < count && polled > 0; i++) {
            short re = fds[i].revents;
            if (!re)
                continue;
            polled--;
            if (re & POLLIN) {
                wake(&fds[i], t, i, quiet);
                if (++wakes == max_wakes)
                    break;
            }
            check_revents(t, i, re);
        }
    }
    out("DONE wakes=%ld\n", wakes);
    return 0;
}
