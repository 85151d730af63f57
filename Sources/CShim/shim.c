#define _GNU_SOURCE
#include "cshim.h"

#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <linux/fs.h>
#include <linux/nbd.h>

int cshim_ioctl_ulong(int fd, unsigned long request, unsigned long arg) {
    return ioctl(fd, request, arg);
}

int cshim_ioctl_ptr(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg);
}

const unsigned long CSHIM_BLKGETSIZE64 = BLKGETSIZE64;
const unsigned long CSHIM_BLKROSET = BLKROSET;
const unsigned long CSHIM_NBD_SET_SOCK = NBD_SET_SOCK;
const unsigned long CSHIM_NBD_SET_BLKSIZE = NBD_SET_BLKSIZE;
const unsigned long CSHIM_NBD_SET_SIZE = NBD_SET_SIZE;
const unsigned long CSHIM_NBD_DO_IT = NBD_DO_IT;
const unsigned long CSHIM_NBD_CLEAR_SOCK = NBD_CLEAR_SOCK;
const unsigned long CSHIM_NBD_CLEAR_QUE = NBD_CLEAR_QUE;
const unsigned long CSHIM_NBD_PRINT_DEBUG = NBD_PRINT_DEBUG;
const unsigned long CSHIM_NBD_SET_SIZE_BLOCKS = NBD_SET_SIZE_BLOCKS;
const unsigned long CSHIM_NBD_DISCONNECT = NBD_DISCONNECT;
const unsigned long CSHIM_NBD_SET_TIMEOUT = NBD_SET_TIMEOUT;
const unsigned long CSHIM_NBD_SET_FLAGS = NBD_SET_FLAGS;

ssize_t cshim_send_fd(int socket, const void *data, size_t length, int fd) {
    struct iovec iov = { .iov_base = (void *)data, .iov_len = length };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
    if (fd < 0) {
        // Data only.
        msg.msg_control = NULL;
        msg.msg_controllen = 0;
    } else {
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    }
    ssize_t n;
    do { n = sendmsg(socket, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t cshim_recv_fd(int socket, void *data, size_t length, int *received_fd) {
    struct iovec iov = { .iov_base = data, .iov_len = length };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
    *received_fd = -1;
    ssize_t n;
    do { n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            memcpy(received_fd, CMSG_DATA(c), sizeof(int));
            break;
        }
    }
    return n;
}

int cshim_spawn_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

const short CSHIM_POSIX_SPAWN_SETSID = POSIX_SPAWN_SETSID;

int cshim_setns_mount(int fd) {
    return setns(fd, CLONE_NEWNS);
}

ssize_t cshim_pread_nowait(int fd, void *buffer, size_t count, off_t offset) {
    struct iovec iov = { .iov_base = buffer, .iov_len = count };
    return preadv2(fd, &iov, 1, offset, RWF_NOWAIT);
}

_Static_assert(sizeof(struct mmsghdr) <= CSHIM_RECORDED_TRANSFER_SIZE, "mmsghdr does not fit the record");

static const unsigned int cshim_nothing_moved = 0xffffffffu;

void cshim_recorded_reset(void *record) {
    struct mmsghdr *header = record;
    __atomic_store_n(&header->msg_len, cshim_nothing_moved, __ATOMIC_RELEASE);
}

int64_t cshim_recorded_count(const void *record) {
    const struct mmsghdr *header = record;
    unsigned int count = __atomic_load_n(&header->msg_len, __ATOMIC_ACQUIRE);
    return count == cshim_nothing_moved ? -1 : (int64_t)count;
}

ssize_t cshim_recorded_send(int fd, void *record, struct iovec *vectors, size_t count, int flags) {
    struct mmsghdr *header = record;
    memset(&header->msg_hdr, 0, sizeof(header->msg_hdr));
    header->msg_hdr.msg_iov = vectors;
    header->msg_hdr.msg_iovlen = count;
    int sent = sendmmsg(fd, header, 1, flags);
    if (sent < 0) return -1;
    return sent == 1 ? (ssize_t)header->msg_len : 0;
}

ssize_t cshim_recorded_receive(int fd, void *record, void *buffer, size_t length, int flags) {
    struct mmsghdr *header = record;
    struct iovec vector = { .iov_base = buffer, .iov_len = length };
    memset(&header->msg_hdr, 0, sizeof(header->msg_hdr));
    header->msg_hdr.msg_iov = &vector;
    header->msg_hdr.msg_iovlen = 1;
    int got = recvmmsg(fd, header, 1, flags, NULL);
    if (got < 0) return -1;
    return got == 1 ? (ssize_t)header->msg_len : 0;
}

void cshim_store_release_u32(void *address, uint32_t value) { __atomic_store_n((uint32_t *)address, value, __ATOMIC_RELEASE); }
void cshim_store_release_u64(void *address, uint64_t value) { __atomic_store_n((uint64_t *)address, value, __ATOMIC_RELEASE); }
uint32_t cshim_load_acquire_u32(const void *address) { return __atomic_load_n((const uint32_t *)address, __ATOMIC_ACQUIRE); }
uint64_t cshim_load_acquire_u64(const void *address) { return __atomic_load_n((const uint64_t *)address, __ATOMIC_ACQUIRE); }

int cshim_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

// dl_iterate_phdr visits the executable first; its executable PT_LOAD segments are populated,
// then the walk stops.
static int populate_code_segments(struct dl_phdr_info *info, size_t size, void *failure) {
    (void)size;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *segment = &info->dlpi_phdr[i];
        if (segment->p_type != PT_LOAD || !(segment->p_flags & PF_X)) continue;
        uintptr_t start = (info->dlpi_addr + segment->p_vaddr) & ~(page - 1);
        uintptr_t end = info->dlpi_addr + segment->p_vaddr + segment->p_memsz;
        if (madvise((void *)start, end - start, MADV_POPULATE_READ) != 0) *(int *)failure = errno;
    }
    return 1;
}

int cshim_populate_executable_code(void) {
    int failure = 0;
    dl_iterate_phdr(populate_code_segments, &failure);
    if (failure != 0) {
        errno = failure;
        return -1;
    }
    return 0;
}

static void *populate_executable_code_thread(void *unused) {
    (void)unused;
    cshim_populate_executable_code();
    return NULL;
}

int cshim_populate_executable_code_in_background(void) {
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int result = pthread_create(&thread, &attributes, populate_executable_code_thread, NULL);
    pthread_attr_destroy(&attributes);
    return result;
}

int cshim_io_uring_setup(uint32_t entries, void *params) {
    return (int)syscall(__NR_io_uring_setup, entries, params);
}

int cshim_io_uring_enter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags) {
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static uint32_t crc32c_table[256];
static pthread_once_t crc32c_table_once = PTHREAD_ONCE_INIT;

static void crc32c_make_table(void) {
    for (uint32_t index = 0; index < 256; index++) {
        uint32_t crc = index;
        for (int bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        crc32c_table[index] = crc;
    }
}

static uint32_t crc32c_software(uint32_t crc, const unsigned char *bytes, size_t length) {
    pthread_once(&crc32c_table_once, crc32c_make_table);
    while (length--) crc = crc32c_table[(crc ^ *bytes++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of 3 cycles and a throughput of 1: three lanes of
// CRC32C_LANE bytes run interleaved, then are joined by shifting each lane's CRC over the
// bytes that follow it (a linear map on the 32-bit register: four byte tables).
#define CRC32C_LANE 4096
static uint32_t crc32c_shift_table[4][256];
static pthread_once_t crc32c_shift_once = PTHREAD_ONCE_INIT;

__attribute__((target("sse4.2")))
static uint32_t crc32c_zeros(uint32_t crc, size_t length) {
    uint64_t wide = crc;
    for (size_t done = 0; done < length; done += 8) wide = __builtin_ia32_crc32di(wide, 0);
    return (uint32_t)wide;
}

static void crc32c_make_shift_table(void) {
    uint32_t basis[32];
    for (int bit = 0; bit < 32; bit++) basis[bit] = crc32c_zeros(1u << bit, CRC32C_LANE);
    for (int byte = 0; byte < 4; byte++) {
        for (uint32_t value = 0; value < 256; value++) {
            uint32_t image = 0;
            for (int bit = 0; bit < 8; bit++)
                if (value & (1u << bit)) image ^= basis[byte * 8 + bit];
            crc32c_shift_table[byte][value] = image;
        }
    }
}

// The register after CRC32C_LANE more zero bytes.
static inline uint32_t crc32c_shift(uint32_t crc) {
    return crc32c_shift_table[0][crc & 0xff] ^ crc32c_shift_table[1][(crc >> 8) & 0xff] ^
        crc32c_shift_table[2][(crc >> 16) & 0xff] ^ crc32c_shift_table[3][crc >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *bytes, size_t length) {
    if (length >= 3 * CRC32C_LANE) pthread_once(&crc32c_shift_once, crc32c_make_shift_table);
    while (length >= 3 * CRC32C_LANE) {
        uint64_t a = crc, b = 0, c = 0;
        for (size_t at = 0; at < CRC32C_LANE; at += 8) {
            uint64_t wa, wb, wc;
            memcpy(&wa, bytes + at, 8);
            memcpy(&wb, bytes + CRC32C_LANE + at, 8);
            memcpy(&wc, bytes + 2 * CRC32C_LANE + at, 8);
            a = __builtin_ia32_crc32di(a, wa);
            b = __builtin_ia32_crc32di(b, wb);
            c = __builtin_ia32_crc32di(c, wc);
        }
        crc = crc32c_shift(crc32c_shift((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)c;
        bytes += 3 * CRC32C_LANE;
        length -= 3 * CRC32C_LANE;
    }
    uint64_t wide = crc;
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, bytes, 8);
        wide = __builtin_ia32_crc32di(wide, word);
        bytes += 8;
        length -= 8;
    }
    uint32_t narrow = (uint32_t)wide;
    while (length--) narrow = __builtin_ia32_crc32qi(narrow, *bytes++);
    return narrow;
}
#endif

uint32_t cshim_crc32c(uint32_t crc, const void *data, size_t length) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return crc32c_sse42(crc, data, length);
#endif
    return crc32c_software(crc, data, length);
}

int cshim_splice_pipe(int ends[2], int size) {
    if (pipe2(ends, O_CLOEXEC) != 0) return -1;
    (void)fcntl(ends[1], F_SETPIPE_SZ, size);
    int capacity = fcntl(ends[1], F_GETPIPE_SZ);
    if (capacity < 0) {
        int saved = errno;
        close(ends[0]);
        close(ends[1]);
        errno = saved;
    }
    return capacity;
}

ssize_t cshim_splice(int in, int64_t *offset, int out, size_t length) {
    loff_t position = offset ? (loff_t)*offset : 0;
    ssize_t moved = splice(in, offset ? &position : NULL, out, NULL, length, 0);
    if (offset && moved > 0) *offset = (int64_t)position;
    return moved;
}

int cshim_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

const int cshim_O_PATH = O_PATH;
