// The few things Swift cannot reach on Linux: ioctl with an `unsigned long` argument,
// function-like request-code macros (_IO/_IOR), and the CMSG_* macros.
#ifndef CSHIM_H
#define CSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <linux/loop.h>
#include <linux/netlink.h>  // struct sockaddr_nl
#include <sys/signalfd.h>  // the supervisor's signals, polled with its worker's channel

// POLLRDHUP: <poll.h> defines it only under _GNU_SOURCE, which Swift's Glibc module lacks.
static const short CSHIM_POLLRDHUP = 0x2000;

// ioctl(fd, request, (unsigned long)arg): Glibc's Swift overlay only offers an `int` argument,
// which truncates NBD_SET_SIZE_BLOCKS and friends.
int cshim_ioctl_ulong(int fd, unsigned long request, unsigned long arg);
// ioctl(fd, request, pointer).
int cshim_ioctl_ptr(int fd, unsigned long request, void *arg);

// Request codes built with _IO/_IOR, which do not import into Swift.
extern const unsigned long CSHIM_BLKGETSIZE64;
extern const unsigned long CSHIM_BLKROSET;
extern const unsigned long CSHIM_NBD_SET_SOCK;
extern const unsigned long CSHIM_NBD_SET_BLKSIZE;
extern const unsigned long CSHIM_NBD_SET_SIZE;
extern const unsigned long CSHIM_NBD_DO_IT;
extern const unsigned long CSHIM_NBD_CLEAR_SOCK;
extern const unsigned long CSHIM_NBD_CLEAR_QUE;
extern const unsigned long CSHIM_NBD_PRINT_DEBUG;
extern const unsigned long CSHIM_NBD_SET_SIZE_BLOCKS;
extern const unsigned long CSHIM_NBD_DISCONNECT;
extern const unsigned long CSHIM_NBD_SET_TIMEOUT;
extern const unsigned long CSHIM_NBD_SET_FLAGS;

// Passing one file descriptor over a Unix socket (SCM_RIGHTS). Return what sendmsg/recvmsg
// return; *received_fd is -1 when no descriptor came with the message. fd < 0 sends data only.
ssize_t cshim_send_fd(int socket, const void *data, size_t length, int fd);
ssize_t cshim_recv_fd(int socket, void *data, size_t length, int *received_fd);

// posix_spawn_file_actions_addclosefrom_np (glibc 2.34+, _GNU_SOURCE): a daemon must not
// inherit descriptors its parent opened without O_CLOEXEC.
#include <spawn.h>
int cshim_spawn_closefrom(posix_spawn_file_actions_t *actions, int from);

// POSIX_SPAWN_SETSID needs _GNU_SOURCE to be visible.
extern const short CSHIM_POSIX_SPAWN_SETSID;

// setns(fd, CLONE_NEWNS): enter a mount namespace (needs _GNU_SOURCE, so not in Glibc's overlay).
int cshim_setns_mount(int fd);

// preadv2(..., RWF_NOWAIT) of one buffer: reads only what the page cache already holds; -1 with
// errno EAGAIN when the read would block on the disk. Needs _GNU_SOURCE, so not in Glibc's overlay.
ssize_t cshim_pread_nowait(int fd, void *buffer, size_t count, off_t offset);


// A one-message sendmmsg(2)/recvmmsg(2) whose message header lives in `record` (64 bytes,
// 8-aligned, typically in shared memory). The kernel writes the count of bytes moved into the
// record before the call returns, so the count survives the caller being killed on the way
// back to user space: a crash journal can tell whether, and how much of, a transfer happened.
// cshim_recorded_reset marks the record "nothing moved yet"; cshim_recorded_count then returns
// -1 until the kernel has written a count.
#define CSHIM_RECORDED_TRANSFER_SIZE 64
void cshim_recorded_reset(void *record);
int64_t cshim_recorded_count(const void *record);
ssize_t cshim_recorded_send(int fd, void *record, struct iovec *vectors, size_t count, int flags);
ssize_t cshim_recorded_receive(int fd, void *record, void *buffer, size_t length, int flags);

// Release stores and acquire loads on shared memory: the order in which a crash journal's
// fields change must be the order another process can see them in after a crash.
void cshim_store_release_u32(void *address, uint32_t value);
void cshim_store_release_u64(void *address, uint64_t value);
uint32_t cshim_load_acquire_u32(const void *address);
uint64_t cshim_load_acquire_u64(const void *address);

// memfd_create(name, MFD_CLOEXEC) (needs _GNU_SOURCE).
int cshim_memfd_create(const char *name);

// Maps every page of this executable's code now (MADV_POPULATE_READ, Linux 5.14+), so code that
// first runs later, at a takeover, does not wait for its pages to be read. 0, or -1 with errno.
int cshim_populate_executable_code(void);
// The same on a detached thread, so nobody waits for it; 0, or an error number.
int cshim_populate_executable_code_in_background(void);

// io_uring_setup(2) and io_uring_enter(2) (no glibc wrappers; syscall(2) is variadic).
// `params` points to a 120-byte struct io_uring_params. Return what the syscalls return.
int cshim_io_uring_setup(uint32_t entries, void *params);
int cshim_io_uring_enter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags);

// CRC-32C (Castagnoli) of `length` bytes continuing from `crc`, without pre- or post-inversion
// (the kernel's crc32c(seed, ...)): the SSE4.2 crc32 instruction where the CPU has it (about 8
// bytes a cycle; zlib's table-driven crc32 does about 1 GB/s), a table otherwise.
uint32_t cshim_crc32c(uint32_t crc, const void *data, size_t length);
// pipe2(ends, O_CLOEXEC), its capacity set to about `size` bytes (F_SETPIPE_SZ; kept as it was
// when refused); returns the capacity in bytes, or -1 with errno (no pipe then).
int cshim_splice_pipe(int ends[2], int size);
// O_PATH (needs _GNU_SOURCE): a descriptor that pins an inode without opening it for I/O.
extern const int cshim_O_PATH;
// fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length): zeros that take
// no disk (needs _GNU_SOURCE).
int cshim_punch_hole(int fd, int64_t offset, int64_t length);
// splice(2) (needs _GNU_SOURCE); `offset` NULL for a pipe end.
ssize_t cshim_splice(int in, int64_t *offset, int out, size_t length);

#endif
