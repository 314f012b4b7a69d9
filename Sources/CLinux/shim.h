// Linux interfaces that Glibc's Swift module leaves out; only PosixIO imports this.
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>

// Both are _GNU_SOURCE declarations; spelled out here so the Glibc module needs no macro.
extern int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);

struct clinux_ucred { int32_t pid; uint32_t uid; uint32_t gid; };
