/* Walk-around routes for tests/tests/walkaround.rs: each subcommand reaches a file or runs a
 * program by one route, printing what it read; exit 0 only when the route worked.
 * Built with `cc` at test time. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

static int dump(int fd) {
  char buf[256];
  ssize_t n = read(fd, buf, sizeof buf);
  if (n < 0) { perror("read"); return 1; }
  fwrite(buf, 1, (size_t)n, stdout);
  return 0;
}

static int fail(const char *what) { perror(what); return 2; }

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: walk CMD ARGS\n"); return 64; }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "read")) {                        /* read PATH */
    int fd = open(argv[2], O_RDONLY);
    return fd < 0 ? fail("open") : dump(fd);
  }
  if (!strcmp(cmd, "read_at") && argc > 3) {         /* read_at DIR NAME: dirfd-relative */
    int dir = open(argv[2], O_RDONLY | O_DIRECTORY);
    if (dir < 0) return fail("open dir");
    int fd = openat(dir, argv[3], O_RDONLY);
    return fd < 0 ? fail("openat") : dump(fd);
  }
  if (!strcmp(cmd, "read_procfd") && argc > 3) {     /* read_procfd DIR NAME: /proc/self/fd/N/NAME */
    int dir = open(argv[2], O_PATH | O_DIRECTORY);
    if (dir < 0) return fail("open dir");
    char p[4200];
    snprintf(p, sizeof p, "/proc/self/fd/%d/%s", dir, argv[3]);
    int fd = open(p, O_RDONLY);
    return fd < 0 ? fail("open procfd") : dump(fd);
  }
  if (!strcmp(cmd, "openat2") && argc > 3) {         /* openat2 DIR NAME: RESOLVE_BENEATH|NO_MAGICLINKS */
    int dir = open(argv[2], O_PATH | O_DIRECTORY);
    if (dir < 0) return fail("open dir");
    struct open_how how = { .flags = O_RDONLY, .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS };
    int fd = (int)syscall(SYS_openat2, dir, argv[3], &how, sizeof how);
    return fd < 0 ? fail("openat2") : dump(fd);
  }
  if (!strcmp(cmd, "opath_reopen")) {                /* opath_reopen PATH: O_PATH, then reopen */
    int o = open(argv[2], O_PATH);
    if (o < 0) return fail("open O_PATH");
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", o);
    int fd = open(p, O_RDONLY);
    return fd < 0 ? fail("reopen") : dump(fd);
  }
  if (!strcmp(cmd, "chroot_read") && argc > 3) {     /* chroot_read ROOT PATH */
    if (chroot(argv[2]) || chdir("/")) return fail("chroot");
    int fd = open(argv[3], O_RDONLY);
    return fd < 0 ? fail("open") : dump(fd);
  }
  if (!strcmp(cmd, "fdexec")) {                      /* fdexec PATH ARGV...: execveat(AT_EMPTY_PATH) */
    int fd = open(argv[2], O_PATH);
    if (fd < 0) return fail("open");
    syscall(SYS_execveat, fd, "", &argv[3], environ, AT_EMPTY_PATH);
    return fail("execveat");
  }
  if (!strcmp(cmd, "deleted_exec")) {                /* deleted_exec PATH ARGV...: open, unlink, exec fd */
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) return fail("open");
    if (unlink(argv[2])) return fail("unlink");
    syscall(SYS_execveat, fd, "", &argv[3], environ, AT_EMPTY_PATH);
    return fail("execveat");
  }
  if (!strcmp(cmd, "memfd_exec")) {                  /* memfd_exec SRC ARGV...: copy into a memfd, exec it */
    int src = open(argv[2], O_RDONLY);
    if (src < 0) return fail("open");
    int m = memfd_create("payload", 0);
    if (m < 0) return fail("memfd_create");
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0)
      if (write(m, buf, (size_t)n) != n) return fail("write");
    syscall(SYS_execveat, m, "", &argv[3], environ, AT_EMPTY_PATH);
    return fail("execveat");
  }
  if (!strcmp(cmd, "exchange") && argc > 3) {        /* exchange A B: renameat2(RENAME_EXCHANGE) */
    return syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, argv[3], 2) ? fail("renameat2") : 0;
  }
  if (!strcmp(cmd, "rename_at") && argc > 4) {       /* rename_at DIR OLD NEW: renameat via a dirfd */
    int dir = open(argv[2], O_PATH | O_DIRECTORY);
    if (dir < 0) return fail("open dir");
    return renameat(dir, argv[3], dir, argv[4]) ? fail("renameat") : 0;
  }
  if (!strcmp(cmd, "unlink_at") && argc > 3) {       /* unlink_at DIR NAME: unlinkat via a dirfd */
    int dir = open(argv[2], O_PATH | O_DIRECTORY);
    if (dir < 0) return fail("open dir");
    return unlinkat(dir, argv[3], 0) ? fail("unlinkat") : 0;
  }
  fprintf(stderr, "unknown command %s\n", cmd);
  return 64;
}
