# C declarations used by the fast path (only the fields that are used).
# Cython ships no socket .pxd with mmsghdr/recvmmsg/sendmmsg: declared here.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout)
    int sendmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags)
    enum:
        MSG_DONTWAIT
        MSG_TRUNC
        AF_INET

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    uint32_t htonl(uint32_t)
    uint32_t ntohl(uint32_t)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLERR
        POLLHUP
        POLLNVAL

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int close(int fd)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR
        EMSGSIZE
        ENOBUFS

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    enum:
        CLOCK_REALTIME
        CLOCK_MONOTONIC

# offloads: writev to a TAP, control messages (UDP_SEGMENT / UDP_GRO)
cdef extern from "<sys/uio.h>" nogil:
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<sys/socket.h>" nogil:
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    cmsghdr *CMSG_NXTHDR(msghdr *m, cmsghdr *c)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_SPACE(size_t n)
    size_t CMSG_LEN(size_t n)
    enum:
        MSG_CTRUNC

cdef extern from *:
    """
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    """
    enum:
        SOL_UDP
        UDP_SEGMENT
        UDP_GRO

cdef extern from "<errno.h>" nogil:
    enum:
        EIO
        EINVAL
        EOPNOTSUPP

# IPv6 underlay: socket addresses of either family, and the control messages that tell the
# receive path a datagram came with extension headers or was reassembled from fragments
cdef extern from "<netinet/in.h>" nogil:
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in6:
        unsigned short sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    enum:
        IPPROTO_IPV6

cdef extern from "<sys/socket.h>" nogil:
    enum:
        AF_INET6

cdef extern from *:
    """
    #ifndef IPV6_HOPOPTS
    #define IPV6_HOPOPTS 54
    #endif
    #ifndef IPV6_RTHDR
    #define IPV6_RTHDR 57
    #endif
    #ifndef IPV6_DSTOPTS
    #define IPV6_DSTOPTS 59
    #endif
    #ifndef IPV6_RTHDRDSTOPTS
    #define IPV6_RTHDRDSTOPTS 55
    #endif
    #ifndef IPV6_RECVFRAGSIZE
    #define IPV6_RECVFRAGSIZE 77
    #endif
    """
    enum:
        IPV6_HOPOPTS
        IPV6_RTHDR
        IPV6_DSTOPTS
        IPV6_RTHDRDSTOPTS
        IPV6_RECVFRAGSIZE
