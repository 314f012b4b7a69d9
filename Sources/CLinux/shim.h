// Linux interfaces that Glibc's Swift module leaves out; only PosixIO imports this.
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <malloc.h>

// Both are _GNU_SOURCE declarations; spelled out here so the Glibc module needs no macro.
extern int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
extern int pipe2(int fds[2], int flags);

// epoll, declared here rather than by including <sys/epoll.h>, for the reason given at
// prctl below. The event is packed on x86_64, as the kernel's; its data is the descriptor.
struct clinux_epoll_event { uint32_t events; int32_t fd; uint32_t pad; } __attribute__((packed));
extern int epoll_create1(int flags);
extern int epoll_ctl(int epfd, int op, int fd, struct clinux_epoll_event *event);
extern int epoll_wait(int epfd, struct clinux_epoll_event *events, int maxevents, int timeout);
enum { CLINUX_EPOLL_CLOEXEC = 02000000, CLINUX_EPOLL_CTL_ADD = 1, CLINUX_EPOLL_CTL_DEL = 2, CLINUX_EPOLL_CTL_MOD = 3 };

struct clinux_ucred { int32_t pid; uint32_t uid; uint32_t gid; };

// ioctl is variadic, which Swift cannot call: attach fd (from /dev/net/tun) to the tap
// device `name`, frames without the packet-information header, and with a virtio-net
// header in front of each frame when `vnet_header` is nonzero (IFF_VNET_HDR).
static inline int clinux_tap_attach(int fd, const char *name, int vnet_header) {
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_header ? IFF_VNET_HDR : 0);
    return ioctl(fd, TUNSETIFF, &request);
}

// Linux 6.2's UDP segmentation offload flags, absent from older headers (Debian 12's 6.1).
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif

// TUNSETOFFLOAD: which of TUN_F_* the reader takes (partial checksums, GSO frames).
static inline int clinux_tap_set_offload(int fd, unsigned int flags) {
    return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags);
}

// TUNSETVNETHDRSZ: the virtio-net header's size in bytes (10 or 12).
static inline int clinux_tap_set_vnet_header_size(int fd, int size) {
    return ioctl(fd, TUNSETVNETHDRSZ, &size);
}

// prctl is variadic too: from here on, exec can never grant privileges (setuid bits,
// file capabilities), neither to slirpd nor to the guestfwd commands it starts.
// Declared here rather than by including <sys/prctl.h>: with that include, a fresh build
// once failed to find MSG_NOSIGNAL in a file that imports Glibc alone, so this module
// pulls in no header beyond those it always had.
extern int prctl(int option, ...);
#define CLINUX_PR_SET_NO_NEW_PRIVS 38
static inline int clinux_forbid_new_privileges(void) {
    return prctl(CLINUX_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

// recvmsg with SCM_RIGHTS, whose CMSG_* macros Swift cannot use: reads up to `length`
// bytes into `buffer` and up to `max_fds` descriptors (close-on-exec) into `fds`. Any
// descriptors beyond `max_fds` are closed here. *fd_count gets the number kept and
// *truncated is set when the kernel cut the control data (MSG_CTRUNC: descriptors the
// kernel did not install were released by it).
#include <unistd.h>
static inline long clinux_recv_with_fds(int sock, void *buffer, size_t length, int *fds, int max_fds,
                                        int *fd_count, int *truncated) {
    union { char bytes[CMSG_SPACE(16 * sizeof(int))]; struct cmsghdr align; } control;
    struct iovec iov = { buffer, length };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof control.bytes;
    *fd_count = 0;
    *truncated = 0;
    long n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *received = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, received + i, sizeof fd);
            if (*fd_count < max_fds) fds[(*fd_count)++] = fd;
            else { close(fd); *truncated = 1; }
        }
    }
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    return n;
}

// fcntl is variadic: a memfd's seals (F_GET_SEALS), or -1 with errno EINVAL for a file
// that is not a memfd.
#include <fcntl.h>
#define CLINUX_F_SEAL_SHRINK 0x0002
static inline int clinux_memfd_seals(int fd) {
    return fcntl(fd, 1034 /* F_GET_SEALS */);
}

// RUSAGE_THREAD is a _GNU_SOURCE value: the calling thread's involuntary context switches.
#include <sys/resource.h>
static inline long clinux_thread_involuntary_switches(void) {
    struct rusage usage;
    return getrusage(1 /* RUSAGE_THREAD */, &usage) == 0 ? usage.ru_nivcsw : 0;
}
