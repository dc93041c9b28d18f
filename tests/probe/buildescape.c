/* vzpkg test probe: what a hostile maintainer script or template script tries
   while a cache is built.  argv: HOSTFILE [PORT...]; one line per attempt,
   "<what> ok" or "<what> failed: <error>".  HOSTFILE.host is a file of the
   host's that it tries to read, HOSTFILE one it tries to create.  Built static
   by the tests. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

static void say(const char *what, int ok) {
    if (ok) printf("%s ok\n", what); else printf("%s failed: %s\n", what, strerror(errno));
    fflush(stdout);
}

static int write_file(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 0;
    int ok = write(fd, "escaped\n", 8) == 8;
    close(fd);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *host = argv[1];
    char buf[4096];
    /* 1. the classic: chroot into a subdirectory, climb out with "..", chroot there */
    pid_t pid = fork();
    if (pid == 0) {
        mkdir("vzpkg-escape-dir", 0700);
        int ok = chroot("vzpkg-escape-dir") == 0;
        for (int i = 0; ok && i < 256; i++) ok = chdir("..") == 0;
        ok = ok && chroot(".") == 0;
        /* out of the chroot, but where? HOSTFILE.host is a file the host has */
        snprintf(buf, sizeof buf, "%s.host", host);
        say("chroot-escape-read", ok && access(buf, R_OK) == 0);
        say("chroot-escape", ok && write_file(host));
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    rmdir("vzpkg-escape-dir");
    /* 2. the root of PID 1 */
    snprintf(buf, sizeof buf, "/proc/1/root%s", host);
    say("proc-1-root", write_file(buf));
    /* 3. mount, mknod */
    mkdir("/tmp/vzpkg-escape-mnt", 0700);
    say("mount", mount("none", "/tmp/vzpkg-escape-mnt", "tmpfs", 0, NULL) == 0);
    say("mknod", mknod("/tmp/vzpkg-escape-sda", S_IFBLK | 0600, makedev(8, 0)) == 0);
    unlink("/tmp/vzpkg-escape-sda");
    /* 4. TCP to the host's loopback */
    for (int i = 2; i < argc; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[i]))};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        snprintf(buf, sizeof buf, "connect-%s", argv[i]);
        say(buf, connect(s, (struct sockaddr *)&a, sizeof a) == 0);
        close(s);
    }
    return 0;
}
