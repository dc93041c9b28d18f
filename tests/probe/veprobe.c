/* veprobe: what a hostile VE root tries, as a static binary copied into test VEs.
 *
 *   veprobe keyring SERIAL   read a key of the host, and add one to the uid's keyring
 *   veprobe userns           a nested user namespace (0->0 map), then mount the pids
 *                            cgroup controller in a cgroup namespace of its own
 *   veprobe tiocsti          push input into the terminals on fds 0, 1 and 2
 *
 * Each step prints "<step> ok" or "<step> err <errno>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

static int report(const char *step, long rc) {
    if (rc < 0) printf("%s err %d\n", step, errno);
    else printf("%s ok\n", step);
    fflush(stdout);
    return rc < 0;
}

static void put(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd >= 0) { if (write(fd, text, strlen(text)) < 0) {} close(fd); }
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "keyring")) {
        char buf[256];
        long serial = atol(argv[2]);
        long n = syscall(SYS_keyctl, 11 /* KEYCTL_READ */, serial, buf, sizeof buf - 1, 0);
        if (n >= 0) { buf[n < 255 ? n : 255] = 0; printf("read-data %s\n", buf); }
        report("read", n);
        report("add", syscall(SYS_add_key, "user", "vzprobe", "planted", 7,
                              -4 /* KEY_SPEC_USER_KEYRING */));
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "userns")) {
        /* clone3 with CLONE_NEWUSER: the flags live in memory */
        unsigned long long args[11] = {0};
        args[0] = CLONE_NEWUSER;
        args[4] = 17; /* SIGCHLD */
        long pid = syscall(SYS_clone3, args, 88);
        if (pid == 0) _exit(0);
        report("clone3", pid);
        if (report("unshare", unshare(CLONE_NEWUSER))) return 0;
        put("/proc/self/setgroups", "deny");
        put("/proc/self/uid_map", "0 0 1");
        put("/proc/self/gid_map", "0 0 1");
        if (report("unshare-mnt-cgroup", unshare(CLONE_NEWNS | CLONE_NEWCGROUP))) return 0;
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
        mkdir("/tmp/vzprobe-cg", 0700);
        report("mount", mount("cgroup", "/tmp/vzprobe-cg", "cgroup", 0, "pids"));
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "tiocsti")) {
        for (int fd = 0; fd < 3; fd++) {
            char step[32];
            char c = 'Z';
            snprintf(step, sizeof step, "tiocsti-%d", fd);
            report(step, ioctl(fd, TIOCSTI, &c));
        }
        return 0;
    }
    fprintf(stderr, "usage: veprobe keyring SERIAL | userns | tiocsti\n");
    return 2;
}
