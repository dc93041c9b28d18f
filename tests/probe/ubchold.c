/* ubchold: holds one of the resources a beancounter counts, as a static binary
 * copied into test VEs (tests/integration/test_ve_beancounters.py).
 *
 *   ubchold mlock MIB      lock MIB MiB of memory (LOCKEDPAGES)
 *   ubchold sigq N         queue N real-time signals to itself, blocked (NUMSIGINFO)
 *   ubchold pty N          open N pseudo-terminals, master and slave (NUMPTY)
 *   ubchold ptm N          open N pseudo-terminals, only their masters (NUMPTY)
 *   ubchold dgram N        a UDP socket on 127.0.0.1 with N unread datagrams of
 *                          1000 bytes (DGRAMRCVBUF)
 *
 * Prints "held N" (what it got; less than asked when a limit refused the rest,
 * with the error on the next line) and then waits for SIGTERM.  Exit status 0. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static int held(int n, int err) {
    printf("held %d\n", n);
    if (err) printf("error %s\n", strerror(err));
    fflush(stdout);
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: ubchold mlock|sigq|pty|ptm|dgram N\n");
        return 2;
    }
    int n = atoi(argv[2]), i;
    if (!strcmp(argv[1], "mlock")) {
        size_t len = (size_t)n << 20;
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return held(0, errno);
        memset(p, 1, len);
        return held(mlock(p, len) == 0 ? n : 0, errno);
    }
    if (!strcmp(argv[1], "sigq")) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGRTMIN);
        sigprocmask(SIG_BLOCK, &set, NULL);
        union sigval v = {0};
        for (i = 0; i < n; i++)
            if (sigqueue(getpid(), SIGRTMIN, v) != 0) return held(i, errno);
        return held(n, 0);
    }
    if (!strcmp(argv[1], "pty") || !strcmp(argv[1], "ptm")) {
        for (i = 0; i < n; i++) {
            int m = posix_openpt(O_RDWR | O_NOCTTY);
            if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) return held(i, errno);
            if (argv[1][2] == 'm') continue;
            const char *name = ptsname(m);
            if (name == NULL || open(name, O_RDWR | O_NOCTTY) < 0) return held(i, errno);
        }
        return held(n, 0);
    }
    if (!strcmp(argv[1], "dgram")) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        socklen_t alen = sizeof a;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int r = socket(AF_INET, SOCK_DGRAM, 0), s = socket(AF_INET, SOCK_DGRAM, 0);
        if (r < 0 || s < 0 || bind(r, (struct sockaddr *)&a, sizeof a) != 0
                || getsockname(r, (struct sockaddr *)&a, &alen) != 0)
            return held(0, errno);
        char buf[1000];
        memset(buf, 'x', sizeof buf);
        for (i = 0; i < n; i++)
            if (sendto(s, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&a, sizeof a) < 0)
                return held(i, errno);
        return held(n, 0);
    }
    fprintf(stderr, "ubchold: unknown resource %s\n", argv[1]);
    return 2;
}
